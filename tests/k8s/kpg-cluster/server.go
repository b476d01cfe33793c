package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/cri-streaming/pkg/streaming/portforward"
	"k8s.io/cri-streaming/pkg/streaming/remotecommand"
	utilexec "k8s.io/utils/exec"
)

func loadPool(caFile string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	return pool, nil
}

// serve answers the kubelet API the apiserver proxies to: exec and port-forward (SPDY, and
// the WebSocket port-forward it passes through), container logs, healthz. TLS with a
// certificate from the cluster CA, client certificates required.
func (n *node) serve(l net.Listener) error {
	cert, err := tls.LoadX509KeyPair(n.cfg.certFile, n.cfg.keyFile)
	if err != nil {
		return err
	}
	pool, err := loadPool(n.cfg.caFile)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	mux.HandleFunc("/exec/", n.handleExec)
	mux.HandleFunc("/portForward/", n.handlePortForward)
	mux.HandleFunc("/containerLogs/", n.handleLogs)
	srv := &http.Server{
		Handler:   mux,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, NextProtos: []string{"http/1.1"}},
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	return nil
}

// pathParts splits /verb/ns/pod[/uid]/container.
func pathParts(path string) []string { return strings.Split(strings.Trim(path, "/"), "/") }

func (n *node) lookup(w http.ResponseWriter, ns, name string) *podRuntime {
	p := n.byName(ns, name)
	if p == nil {
		http.Error(w, fmt.Sprintf("pod %s/%s not found on node %s", ns, name, nodeName), http.StatusNotFound)
	}
	return p
}

func (n *node) handleExec(w http.ResponseWriter, r *http.Request) {
	parts := pathParts(r.URL.Path)
	if len(parts) < 4 {
		http.Error(w, "bad exec path", http.StatusBadRequest)
		return
	}
	ns, name, cname := parts[1], parts[2], parts[len(parts)-1]
	p := n.lookup(w, ns, name)
	if p == nil {
		return
	}
	opts, err := remotecommand.NewOptions(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	cmd := r.URL.Query()["command"]
	remotecommand.ServeExec(w, r, executor{p}, name, p.uid, cname, cmd, opts, 4*time.Hour, 30*time.Second, remotecommand.SupportedStreamingProtocols)
}

type executor struct{ p *podRuntime }

func (e executor) ExecInContainer(ctx context.Context, _ string, _ string, cname string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, _ <-chan remotecommand.TerminalSize, _ time.Duration) error {
	c := e.p.containers[cname]
	if c == nil {
		return fmt.Errorf("container %q not found in pod %s", cname, e.p.name)
	}
	if !c.running() {
		return fmt.Errorf("container %q is not running", cname)
	}
	if len(cmd) == 0 {
		return fmt.Errorf("no command given")
	}
	c.mu.Lock()
	env := c.env
	c.mu.Unlock()
	run := c.command(ctx, c.execEnv(env), c.translateArgs(cmd)...)
	run.Stdin, run.Stdout, run.Stderr = in, out, errOut
	if tty {
		run.Stderr = out
	}
	err := run.Run()
	if exit, ok := err.(*exec.ExitError); ok {
		code := exit.ExitCode()
		if code < 0 {
			code = 137
		}
		return utilexec.CodeExitError{Err: err, Code: code}
	}
	if err != nil && strings.Contains(err.Error(), "executable file not found") {
		return utilexec.CodeExitError{Err: err, Code: 127}
	}
	return err
}

// execEnv is the container's environment for a process started in it: its PATH has the
// image's binaries, PGHOST its socket directory (the official image's compiled-in default),
// and paths inside the container point at the host directories behind them.
func (c *container) execEnv(env []string) []string {
	if c.image.kind == imageOperator || c.image.kind == imageRooted {
		return env
	}
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(v, "/") {
			if host, mounted := c.pod.hostPath(&c.spec, v); mounted {
				v = host
			}
		}
		out = append(out, k+"="+v)
	}
	path := "/usr/local/bin:/usr/bin:/bin"
	if c.image.kind == imagePostgres {
		path = c.image.bin + ":" + clientsBin(c.pod.n.cfg.pgRoot) + ":" + path
		socket, _ := c.pod.hostPath(&c.spec, "/var/run/postgresql")
		out = setEnv(out, "PGHOST="+socket)
		if !hasKey(env, "PGDATA") {
			def := "/var/lib/postgresql/data"
			if c.image.major >= 18 {
				def = fmt.Sprintf("/var/lib/postgresql/%d/docker", c.image.major)
			}
			host, _ := c.pod.hostPath(&c.spec, def)
			out = append(out, "PGDATA="+host)
		}
	}
	return setEnv(out, "PATH="+path)
}

func hasKey(env []string, key string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, key+"=") {
			return true
		}
	}
	return false
}

// translateArgs rewrites arguments that are paths under a volume mount.
func (c *container) translateArgs(cmd []string) []string {
	if c.image.kind == imageOperator || c.image.kind == imageRooted {
		return cmd
	}
	out := make([]string, len(cmd))
	for i, a := range cmd {
		out[i] = a
		if strings.HasPrefix(a, "/") && i > 0 {
			if host, mounted := c.pod.hostPath(&c.spec, a); mounted {
				out[i] = host
			}
		}
	}
	return out
}

func (n *node) handlePortForward(w http.ResponseWriter, r *http.Request) {
	parts := pathParts(r.URL.Path)
	if len(parts) < 3 {
		http.Error(w, "bad portForward path", http.StatusBadRequest)
		return
	}
	p := n.lookup(w, parts[1], parts[2])
	if p == nil {
		return
	}
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	portforward.ServePortForward(w, r, forwarder{p}, p.name, p.uid, opts, 4*time.Hour, 30*time.Second, portforward.SupportedProtocols)
}

type forwarder struct{ p *podRuntime }

func (f forwarder) PortForward(ctx context.Context, _ string, _ string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	conn, err := dialPod(f.p, fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	if err != nil {
		return fmt.Errorf("failed to connect to localhost:%d inside namespace %q, IPv4: %v", port, f.p.uid, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(conn, stream); _ = conn.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { _, _ = io.Copy(stream, conn); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}

// dialPod connects to an address inside the pod's network namespace, from a thread that
// enters it and is then thrown away (Go ends a thread that exits locked).
func dialPod(p *podRuntime, addr string, timeout time.Duration) (net.Conn, error) {
	type result struct {
		conn net.Conn
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+p.netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			ch <- result{nil, err}
			return
		}
		conn, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			_ = conn.(*net.TCPConn).SetNoDelay(true)
		}
		ch <- result{conn, err}
	}()
	r := <-ch
	return r.conn, r.err
}

func killGroup(pid int) error { return syscall.Kill(-pid, syscall.SIGKILL) }

// handleLogs serves /containerLogs/ns/pod/container with follow, tailLines, sinceSeconds,
// sinceTime, timestamps, previous and limitBytes, as the kubelet does.
func (n *node) handleLogs(w http.ResponseWriter, r *http.Request) {
	parts := pathParts(r.URL.Path)
	if len(parts) != 4 {
		http.Error(w, "bad containerLogs path", http.StatusBadRequest)
		return
	}
	p := n.lookup(w, parts[1], parts[2])
	if p == nil {
		return
	}
	c := p.containers[parts[3]]
	if c == nil {
		http.Error(w, fmt.Sprintf("container %q in pod %q is not available", parts[3], p.name), http.StatusBadRequest)
		return
	}
	q := r.URL.Query()
	c.mu.Lock()
	restarts, running := c.restarts, c.proc != nil
	waiting, ran := c.state.Waiting, c.lastState.Terminated != nil
	c.mu.Unlock()
	index := restarts
	if q.Get("previous") != "true" && waiting != nil && !running && !ran {
		// As the kubelet's validateContainerLogStatus: a container that never ran has no log.
		http.Error(w, fmt.Sprintf("container %q in pod %q is waiting to start: %s", c.spec.Name, p.name, waiting.Reason), http.StatusBadRequest)
		return
	}
	if q.Get("previous") == "true" {
		if restarts == 0 {
			http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found", c.spec.Name, p.name), http.StatusBadRequest)
			return
		}
		index = restarts - 1
	} else if !running && restarts > 0 {
		index = restarts - 1
	}
	since := time.Time{}
	if s := q.Get("sinceSeconds"); s != "" {
		if v, err := strconv.Atoi(s); err == nil {
			since = time.Now().Add(-time.Duration(v) * time.Second)
		}
	}
	if s := q.Get("sinceTime"); s != "" {
		if t, err := time.Parse(time.RFC3339, s); err == nil {
			since = t
		}
	}
	timestamps := q.Get("timestamps") == "true"
	lines, err := readLog(c.logPath(index), timestamps, since)
	if err != nil && !os.IsNotExist(err) {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if t := q.Get("tailLines"); t != "" {
		if v, err := strconv.Atoi(t); err == nil && v >= 0 && v < len(lines) {
			lines = lines[len(lines)-v:]
		}
	}
	limit := -1
	if l := q.Get("limitBytes"); l != "" {
		limit, _ = strconv.Atoi(l)
	}
	w.Header().Set("Content-Type", "text/plain")
	written := 0
	write := func(line string) bool {
		b := []byte(line + "\n")
		if limit >= 0 && written+len(b) > limit {
			b = b[:max(limit-written, 0)]
		}
		if _, err := w.Write(b); err != nil {
			return false
		}
		written += len(b)
		return limit < 0 || written < limit
	}
	for _, line := range lines {
		if !write(line) {
			return
		}
	}
	if q.Get("follow") != "true" || index != restarts {
		return
	}
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	follow(r.Context(), c, c.logPath(index), len(lines), timestamps, write, w)
}

// follow streams lines appended to a log file until the container exits or the client goes.
func follow(ctx context.Context, c *container, path string, _ int, timestamps bool, write func(string) bool, w http.ResponseWriter) {
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	offset, _ := f.Seek(0, io.SeekEnd)
	_ = offset
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	buf := make([]byte, 0, 4096)
	chunk := make([]byte, 4096)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		n, _ := f.Read(chunk)
		buf = append(buf, chunk[:n]...)
		for {
			i := strings.IndexByte(string(buf), '\n')
			if i < 0 {
				break
			}
			line, _ := formatLogLine(string(buf[:i]), timestamps, time.Time{})
			buf = buf[i+1:]
			if !write(line) {
				return
			}
			if fl, ok := w.(http.Flusher); ok {
				fl.Flush()
			}
		}
		if n > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-done:
			return
		case <-tick.C:
		}
	}
}
