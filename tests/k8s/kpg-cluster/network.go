package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// The pod network. Each run takes a slot S (0-15), held by a lock on /run/kpg-net/S.lock for
// as long as the run lives, so two runs share the machine and the next run sweeps what a
// killed one left:
//
//   - the node's network namespace kpg-node-S, holding the bridge cbr0 at 10.244.S.1/24, where
//     kube-proxy, CoreDNS and the apiserver's forwarder run;
//   - per pod, a veth from the pod's namespace (eth0, 10.244.S.N/24, default route via the
//     bridge) to the bridge, hairpin on;
//   - a veth from the host (kpgS-host, 10.244.S.254/24) to the bridge: the host's only route
//     into the pod range, so the apiserver reaches pod IPs (pods/proxy) and nothing of that
//     range can leave by the default route;
//   - an unreachable route on the host for the Service range 10.96.16S.0/20, whose addresses
//     exist only inside the node's namespace (kube-proxy's rules).
const netLockDir = "/run/kpg-net"

type network struct {
	slot int
	lock *os.File
	ns   string

	mu   sync.Mutex
	used map[int]bool
}

var theNet *network

// setupNetwork takes the first free slot, sweeps what a dead run left in it and builds it.
func setupNetwork() (*network, error) {
	if err := os.MkdirAll(netLockDir, 0o755); err != nil {
		return nil, err
	}
	for slot := 0; slot < 16; slot++ {
		f, err := os.OpenFile(filepath.Join(netLockDir, fmt.Sprintf("%d.lock", slot)), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			return nil, err
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			continue
		}
		n := &network{slot: slot, lock: f, ns: fmt.Sprintf("kpg-node-%d", slot), used: map[int]bool{}}
		n.sweep()
		if err := n.build(); err != nil {
			n.teardown()
			return nil, err
		}
		return n, nil
	}
	return nil, fmt.Errorf("no free pod network slot: 16 runs hold %s/*.lock", netLockDir)
}

// Addresses of the slot.
func (n *network) podCIDR() string     { return fmt.Sprintf("10.244.%d.0/24", n.slot) }
func (n *network) gateway() string     { return fmt.Sprintf("10.244.%d.1", n.slot) }
func (n *network) hostAddr() string    { return fmt.Sprintf("10.244.%d.254", n.slot) }
func (n *network) serviceCIDR() string { return fmt.Sprintf("10.96.%d.0/20", 16*n.slot) }
func (n *network) apiServiceIP() string {
	return fmt.Sprintf("10.96.%d.1", 16*n.slot)
}
func (n *network) dnsServiceIP() string { return fmt.Sprintf("10.96.%d.10", 16*n.slot) }
func (n *network) hostLink() string     { return fmt.Sprintf("kpg%d-host", n.slot) }
func (n *network) podNetns(uid string) string {
	return fmt.Sprintf("kpg%d-%s", n.slot, uid[:12])
}

// sweep removes what a run killed while holding this slot left: its namespaces (the veths die
// with them) and its route.
func (n *network) sweep() {
	entries, _ := os.ReadDir("/run/netns")
	prefix := fmt.Sprintf("kpg%d-", n.slot)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			_ = exec.Command("ip", "netns", "del", e.Name()).Run()
		}
	}
	_ = exec.Command("ip", "netns", "del", n.ns).Run()
	_ = exec.Command("ip", "link", "del", n.hostLink()).Run()
	_ = exec.Command("ip", "route", "del", "unreachable", n.serviceCIDR()).Run()
}

func (n *network) build() error {
	if err := ipCmd("", "netns", "add", n.ns); err != nil {
		return err
	}
	if err := ipBatch(n.ns,
		"link set lo up",
		"link add cbr0 type bridge",
		"addr add "+n.gateway()+"/24 dev cbr0",
		"link set cbr0 up",
	); err != nil {
		return err
	}
	// Routing between pods and to the node's own addresses after kube-proxy's DNAT; bridged
	// traffic through netfilter, so a Service reply from a pod on the same bridge is un-NATed.
	for file, value := range map[string]string{
		"net/ipv4/ip_forward":                 "1",
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
		"net/ipv4/conf/all/route_localnet":    "1",
	} {
		if err := inNetns(n.ns, func() error { return os.WriteFile("/proc/sys/"+file, []byte(value), 0o644) }); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", file, n.ns, err)
		}
	}
	if err := ipCmd("", "link", "add", n.hostLink(), "type", "veth", "peer", "name", "host0", "netns", n.ns); err != nil {
		return err
	}
	if err := ipBatch(n.ns, "link set host0 master cbr0", "link set host0 up"); err != nil {
		return err
	}
	if err := ipBatch("", "addr add "+n.hostAddr()+"/24 dev "+n.hostLink(), "link set "+n.hostLink()+" up",
		"route add unreachable "+n.serviceCIDR()); err != nil {
		return err
	}
	return nil
}

// teardown removes everything the run made, then releases the slot.
func (n *network) teardown() {
	n.sweep()
	_ = n.lock.Close()
}

// allocate gives a pod an address of the slot (2-250), released when the pod's sandbox goes.
func (n *network) allocate() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i := 2; i <= 250; i++ {
		if !n.used[i] {
			n.used[i] = true
			return fmt.Sprintf("10.244.%d.%d", n.slot, i)
		}
	}
	return ""
}

func (n *network) release(ip string) {
	var slot, i int
	if _, err := fmt.Sscanf(ip, "10.244.%d.%d", &slot, &i); err == nil {
		n.mu.Lock()
		delete(n.used, i)
		n.mu.Unlock()
	}
}

// attach wires a pod's namespace to the bridge: eth0 with the pod's address and a default route
// via the node. The node's end is named after the address, which is unique while the pod lives.
func (n *network) attach(netns, ip string) error {
	last := ip[strings.LastIndex(ip, ".")+1:]
	peer := "vp" + last
	// A pod gone before its namespace (a process still held it) may have left its end behind.
	_ = ipCmd(n.ns, "link", "del", peer)
	if err := ipBatch(n.ns,
		"link add "+peer+" type veth peer name eth0 netns "+netns,
		"link set "+peer+" master cbr0",
		"link set "+peer+" type bridge_slave hairpin on",
		"link set "+peer+" up",
	); err != nil {
		return err
	}
	return ipBatch(netns,
		"addr add "+ip+"/24 dev eth0",
		"link set eth0 up",
		"route add default via "+n.gateway(),
	)
}

func ipCmd(netns string, args ...string) error {
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
	return nil
}

func ipBatch(netns string, lines ...string) error {
	args := []string{"-batch", "-"}
	if netns != "" {
		args = append([]string{"-n", netns}, args...)
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdin = strings.NewReader(strings.Join(lines, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip -n %s: %s", netns, strings.TrimSpace(string(out)))
	}
	return nil
}

// inNetns runs f on a thread moved into the named network namespace. The thread is never
// unlocked, so it ends with the goroutine instead of carrying the namespace to other work;
// sockets f opens stay in that namespace.
func inNetns(netns string, f func() error) error {
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+netns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		done <- f()
	}()
	return <-done
}

// forwardAPI listens at the bridge address in the node's namespace, on the apiserver's port,
// and relays each connection to the apiserver on the host's loopback: the `kubernetes`
// Service's endpoint, for pods, kube-proxy and CoreDNS, while the apiserver binds 127.0.0.1.
func (n *network) forwardAPI(port string) error {
	var l net.Listener
	if err := inNetns(n.ns, func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(n.gateway(), port))
		return err
	}); err != nil {
		return fmt.Errorf("apiserver forwarder: %w", err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", net.JoinHostPort("127.0.0.1", port))
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{}, 2)
				pipe := func(dst, src net.Conn) {
					_, _ = io.Copy(dst, src)
					if t, ok := dst.(*net.TCPConn); ok {
						_ = t.CloseWrite()
					}
					done <- struct{}{}
				}
				go pipe(up, c)
				go pipe(c, up)
				<-done
				<-done
			}()
		}
	}()
	return nil
}

// publishEndpoints backs the selectorless `default/kubernetes` (the apiserver runs with
// --endpoint-reconciler-type=none) and `kube-system/kube-dns` Services with the node's bridge
// address, where the forwarder and CoreDNS listen.
func (n *network) publishEndpoints(ctx context.Context, client kubernetes.Interface, apiPort int32) error {
	dns := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "kube-dns", Namespace: "kube-system", Labels: map[string]string{"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: n.dnsServiceIP(),
			Ports: []corev1.ServicePort{
				{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Port: 53, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	if _, err := client.CoreV1().Services("kube-system").Create(ctx, dns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	slice := func(ns, svc string, ports ...discoveryv1.EndpointPort) *discoveryv1.EndpointSlice {
		return &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{Name: svc, Namespace: ns, Labels: map[string]string{
				discoveryv1.LabelServiceName: svc, discoveryv1.LabelManagedBy: "kpg-cluster",
			}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{
				Addresses:  []string{n.gateway()},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
				NodeName:   ptr.To(nodeName),
			}},
			Ports: ports,
		}
	}
	port := func(name string, p int32, proto corev1.Protocol) discoveryv1.EndpointPort {
		return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(proto)}
	}
	for _, s := range []*discoveryv1.EndpointSlice{
		slice("default", "kubernetes", port("https", apiPort, corev1.ProtocolTCP)),
		slice("kube-system", "kube-dns", port("dns", 53, corev1.ProtocolUDP), port("dns-tcp", 53, corev1.ProtocolTCP)),
	} {
		if _, err := client.DiscoveryV1().EndpointSlices(s.Namespace).Create(ctx, s, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	// The Endpoints object too, for clients that still read it; not mirrored into a second slice.
	ep := &corev1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{discoveryv1.LabelSkipMirror: "true"}},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: n.gateway()}},
			Ports:     []corev1.EndpointPort{{Name: "https", Port: apiPort, Protocol: corev1.ProtocolTCP}},
		}},
	}
	if _, err := client.CoreV1().Endpoints("default").Create(ctx, ep, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return nil
}

// corefile serves cluster.local and the reverse zones from the API, at the bridge address
// only; other names are refused (there is no upstream: nothing may leave the machine).
func (n *network) corefile(kubeconfig string) string {
	return fmt.Sprintf(`cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {
    bind %s
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig %s kpg-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
`, n.gateway(), kubeconfig)
}

// nsenterArgs prefixes a command so it runs in the node's network namespace.
func (n *network) nsenter(path string, args ...string) (string, []string) {
	return "nsenter", append([]string{"--net=/run/netns/" + n.ns, "--", path}, args...)
}

// startPodNetwork runs what serves Services inside the node's namespace: the apiserver's
// forwarder and its endpoints, kube-proxy (nftables) and CoreDNS.
func startPodNetwork(ctx context.Context, sup *supervisor, dir string, apiPort int) error {
	port := strconv.Itoa(apiPort)
	if err := theNet.forwardAPI(port); err != nil {
		return err
	}
	pki := func(name string) string { return filepath.Join(dir, "pki", name) }
	inner := "https://" + net.JoinHostPort(theNet.gateway(), port)
	proxyConfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	dnsConfig := filepath.Join(dir, "coredns.kubeconfig")
	if err := writeKubeconfig(proxyConfig, inner, pki("ca.crt"), pki("kube-proxy.crt"), pki("kube-proxy.key"), "system:kube-proxy"); err != nil {
		return err
	}
	// CoreDNS reads Services, EndpointSlices, Namespaces and Pods cluster-wide; the admin
	// identity spares a Role that the suite would have to keep in step with CoreDNS.
	if err := writeKubeconfig(dnsConfig, inner, pki("ca.crt"), pki("admin.crt"), pki("admin.key"), "kubernetes-admin"); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	if err := theNet.publishEndpoints(ctx, client, int32(apiPort)); err != nil {
		return err
	}
	if err := sup.startInNode("kube-proxy", filepath.Join(*binDir, "kube-proxy"),
		"--kubeconfig="+proxyConfig, "--hostname-override="+nodeName,
		"--proxy-mode=nftables", "--cluster-cidr="+theNet.podCIDR(),
		"--healthz-bind-address=", "--metrics-bind-address=",
		"--conntrack-max-per-core=0", "--v=1"); err != nil {
		return err
	}
	corefile := filepath.Join(dir, "Corefile")
	if err := os.WriteFile(corefile, []byte(theNet.corefile(dnsConfig)), 0o644); err != nil {
		return err
	}
	return sup.startInNode("coredns", *coreDNS, "-conf", corefile)
}
