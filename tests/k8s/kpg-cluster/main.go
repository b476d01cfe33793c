// Command kpg-cluster runs a real Kubernetes control plane on loopback for kubectl-pg's tests:
// etcd, kube-apiserver, kube-controller-manager and kube-scheduler as built from the pinned
// module, plus one node (this process) whose pods run real PostgreSQL servers of the major
// their image names. It prints "kubeconfig: PATH" and "kubectl: PATH" once the cluster
// answers, and stops every process it started on SIGINT, SIGTERM or, with -stdin, when its
// standard input closes (the test process that started it has gone).
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/base64"
	"flag"
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

var (
	binDir      = flag.String("bin", "", "directory holding etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl")
	pgRoot      = flag.String("postgres", "", "directory holding one folder per PostgreSQL major (14 … 18), each with bin/postgres")
	stateDir    = flag.String("dir", "", "state directory (a new temporary one when empty)")
	kubeconfig  = flag.String("kubeconfig", "", "where to write the admin kubeconfig (default DIR/admin.kubeconfig)")
	watchStdin  = flag.Bool("stdin", false, "stop when standard input closes")
	removeDir   = flag.Bool("remove-dir", false, "remove the state directory (volumes, logs) once stopped")
	nodeCPU     = flag.String("node-cpu", "4", "the node's allocatable cpu")
	nodeMemory  = flag.String("node-memory", "16Gi", "the node's allocatable memory")
	cnpgDir     = flag.String("cnpg", "", "directory holding CloudNativePG's manager, kubectl-cnpg and crd/ (its images and operator)")
	coreDNS     = flag.String("coredns", "", "the CoreDNS binary, the pod network's DNS")
	startupWait = flag.Duration("startup-timeout", 3*time.Minute, "how long the control plane may take to answer")
)

type supervisor struct {
	mu    sync.Mutex
	procs []*exec.Cmd
	dir   string
}

func (s *supervisor) start(name string, args ...string) error {
	return s.startPath(name, filepath.Join(*binDir, name), args...)
}

// startInNode starts a component in the node's network namespace (kube-proxy, CoreDNS).
func (s *supervisor) startInNode(name, path string, args ...string) error {
	return s.startPath(name, "nsenter", append([]string{"--net=/run/netns/" + theNet.ns, "--", path}, args...)...)
}

func (s *supervisor) startPath(name, path string, args ...string) error {
	return s.startCmd(name, exec.Command(path, args...))
}

func (s *supervisor) startCmd(name string, cmd *exec.Cmd) error {
	log, err := os.Create(filepath.Join(s.dir, "logs", name+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	// A kill -9 of this process takes its components with it: no apiserver, kube-proxy or
	// CoreDNS outlives the run (and holds its network namespace).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := spawn(cmd); err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	s.mu.Lock()
	s.procs = append(s.procs, cmd)
	s.mu.Unlock()
	go func() {
		err := cmd.Wait()
		if !stopping.Load() {
			fmt.Fprintf(os.Stderr, "kpg-cluster: %s exited: %v (log: %s)\n", name, err, log.Name())
		}
	}()
	return nil
}

// stop ends the components in reverse order of start: the apiserver before etcd.
func (s *supervisor) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		if p.Process == nil {
			continue
		}
		_ = syscall.Kill(-p.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _, _ = p.Process.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		}
	}
}

// spawner is the one OS thread that starts components. The parent-death signal is tied to the
// thread that forked, and this program ends threads (the ones it moves into network
// namespaces), so components are forked from a thread that lives as long as the process.
var spawner = func() chan func() {
	work := make(chan func())
	go func() {
		runtime.LockOSThread()
		for f := range work {
			f()
		}
	}()
	return work
}()

func spawn(cmd *exec.Cmd) error {
	done := make(chan error)
	spawner <- func() { done <- cmd.Start() }
	return <-done
}

// freePort picks a free port below the kernel's ephemeral range (32768 and up), so that no
// port another process asks the kernel for (port 0, or any outgoing connection) can take it
// between this check and the component's own bind.
func freePort() int {
	for {
		port := 20000 + rand.Intn(12000)
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			l.Close()
			return port
		}
	}
}

func writeKubeconfig(path, server, caFile, certFile, keyFile, user string) error {
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			panic(err)
		}
		return base64.StdEncoding.EncodeToString(b)
	}
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: kpg-test
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: kpg-test
  context:
    cluster: kpg-test
    user: %s
current-context: kpg-test
`, server, read(caFile), user, read(certFile), read(keyFile), user)
	return os.WriteFile(path, []byte(text), 0o600)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "kpg-cluster: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == "entrypoint" {
		entrypoint(os.Args[2:])
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "sandbox" {
		sandbox(os.Args[2:])
		return
	}
	flag.Parse()
	// The streaming library logs every stream a client closes; the components' own logs are in
	// DIR/logs, and this process reports its errors itself.
	klog.LogToStderr(false)
	klog.SetOutput(io.Discard)
	if *binDir == "" || *pgRoot == "" || *coreDNS == "" {
		fail("-bin, -postgres and -coredns are required")
	}
	dir := *stateDir
	if dir == "" {
		d, err := os.MkdirTemp("", "kpg-cluster-")
		if err != nil {
			fail("%v", err)
		}
		dir = d
	}
	dir, _ = filepath.Abs(dir)
	for _, sub := range []string{"pki", "logs", "etcd", "pods", "volumes"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o755); err != nil {
			fail("%v", err)
		}
	}
	if *kubeconfig == "" {
		*kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	}
	network, err := setupNetwork()
	if err != nil {
		fail("pod network: %v", err)
	}
	theNet = network
	sup := &supervisor{dir: dir}
	ctx, cancel := context.WithCancel(context.Background())
	shutdown := func(code int) {
		stopping.Store(true)
		cancel()
		stopNode()
		sup.stop()
		theNet.teardown()
		if *removeDir && code == 0 {
			_ = os.RemoveAll(dir)
		}
		os.Exit(code)
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-signals; shutdown(0) }()
	if *watchStdin {
		// Lines on stdin are requests: "cnpg" starts CloudNativePG's operator.
		go func() {
			lines := bufio.NewScanner(os.Stdin)
			for lines.Scan() {
				if strings.TrimSpace(lines.Text()) == "cnpg" {
					go answerCNPG(ctx, sup, dir)
				}
			}
			shutdown(0)
		}()
	}
	if err := run(ctx, sup, dir); err != nil {
		fmt.Fprintf(os.Stderr, "kpg-cluster: %v (logs in %s)\n", err, filepath.Join(dir, "logs"))
		shutdown(1)
	}
	select {}
}

func run(ctx context.Context, sup *supervisor, dir string) error {
	pki := filepath.Join(dir, "pki")
	ca, err := newAuthority(pki)
	if err != nil {
		return err
	}
	for _, c := range []struct {
		name, cn string
		groups   []string
		server   bool
	}{
		{"apiserver", "kube-apiserver", nil, true},
		{"kubelet", "system:node:" + nodeName, nil, true},
		{"admin", "kubernetes-admin", []string{"system:masters"}, false},
		{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", []string{"system:masters"}, false},
		{"controller-manager", "system:kube-controller-manager", nil, false},
		{"scheduler", "system:kube-scheduler", nil, false},
		{"kube-proxy", "system:kube-proxy", nil, false},
		{"cnpg-webhook", "cnpg-webhook-service.cnpg-system.svc", nil, true},
	} {
		if err := ca.issue(c.name, c.cn, c.groups, c.server); err != nil {
			return err
		}
	}
	if err := serviceAccountKey(pki); err != nil {
		return err
	}
	p := func(name string) string { return filepath.Join(pki, name) }

	etcdClient, etcdPeer := freePort(), freePort()
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)
	if err := sup.start("etcd",
		"--name=default", "--data-dir="+filepath.Join(dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=default="+peerURL, "--listen-metrics-urls=",
		"--unsafe-no-fsync", "--log-level=warn"); err != nil {
		return err
	}

	apiPort := freePort()
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := sup.start("kube-apiserver",
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(apiPort),
		"--endpoint-reconciler-type=none",
		"--tls-cert-file="+p("apiserver.crt"), "--tls-private-key-file="+p("apiserver.key"),
		"--client-ca-file="+p("ca.crt"),
		"--kubelet-client-certificate="+p("apiserver-kubelet-client.crt"), "--kubelet-client-key="+p("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority="+p("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file="+p("sa.pub"), "--service-account-signing-key-file="+p("sa.key"),
		"--service-cluster-ip-range="+theNet.serviceCIDR(),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=false",
		"--profiling=false",
		"--v=1"); err != nil {
		return err
	}
	for _, c := range []struct{ file, cert, user string }{
		{*kubeconfig, "admin", "kubernetes-admin"},
		{filepath.Join(dir, "controller-manager.kubeconfig"), "controller-manager", "system:kube-controller-manager"},
		{filepath.Join(dir, "scheduler.kubeconfig"), "scheduler", "system:kube-scheduler"},
	} {
		if err := writeKubeconfig(c.file, server, p("ca.crt"), p(c.cert+".crt"), p(c.cert+".key"), c.user); err != nil {
			return err
		}
	}
	if err := waitReady(ctx, server, p("ca.crt"), p("admin.crt"), p("admin.key")); err != nil {
		return err
	}
	if err := startPodNetwork(ctx, sup, dir, apiPort); err != nil {
		return fmt.Errorf("pod network: %w", err)
	}
	cmKubeconfig := filepath.Join(dir, "controller-manager.kubeconfig")
	if err := sup.start("kube-controller-manager",
		"--kubeconfig="+cmKubeconfig,
		"--authentication-kubeconfig="+cmKubeconfig, "--authorization-kubeconfig="+cmKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(freePort()),
		"--leader-elect=false", "--use-service-account-credentials=true",
		"--service-account-private-key-file="+p("sa.key"), "--root-ca-file="+p("ca.crt"),
		"--cluster-signing-cert-file="+p("ca.crt"), "--cluster-signing-key-file="+p("ca.key"),
		"--controllers=*,-nodeipam",
		"--v=1"); err != nil {
		return err
	}
	schedKubeconfig := filepath.Join(dir, "scheduler.kubeconfig")
	if err := sup.start("kube-scheduler",
		"--kubeconfig="+schedKubeconfig,
		"--authentication-kubeconfig="+schedKubeconfig, "--authorization-kubeconfig="+schedKubeconfig,
		"--bind-address=127.0.0.1", "--secure-port="+strconv.Itoa(freePort()),
		"--leader-elect=false", "--v=1"); err != nil {
		return err
	}
	if err := startNode(ctx, nodeConfig{
		kubeconfig: *kubeconfig,
		dir:        dir,
		pgRoot:     *pgRoot,
		certFile:   p("kubelet.crt"),
		keyFile:    p("kubelet.key"),
		caFile:     p("ca.crt"),
		cpu:        *nodeCPU,
		memory:     *nodeMemory,
	}); err != nil {
		return err
	}
	if err := waitSettled(ctx); err != nil {
		return err
	}
	fmt.Printf("kubeconfig: %s\n", *kubeconfig)
	fmt.Printf("kubectl: %s\n", filepath.Join(*binDir, "kubectl"))
	fmt.Printf("state: %s\n", dir)
	close(planeReady)
	return nil
}

// waitReady polls /readyz until the apiserver says ok: before it listens there is nothing to
// watch.
func waitReady(ctx context.Context, server, ca, cert, key string) error {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return err
	}
	pool, err := loadPool(ca)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}}}}
	deadline := time.Now().Add(*startupWait)
	var last string
	for time.Now().Before(deadline) {
		resp, err := client.Get(server + "/readyz")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return nil
			}
			last = strings.TrimSpace(string(body))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %s", *startupWait, last)
}
