package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// What a pod's containers see of the filesystem: each main process runs in a mount (and UTS)
// namespace of its own, over the host's files, with its volumes bound at their mount paths and
// the pod's /etc/hosts, /etc/hostname and /etc/resolv.conf bound over the host's. A tmpfs on
// /run gives mount points under /run (the service-account token's) a place to exist; a mount
// path whose parent is missing elsewhere on the host is not mounted (the container's paths are
// still translated for postgres images and exec, as before).

// hostname is the pod's host name as the kubelet gives it: spec.hostname, else the pod name
// (cut to 63 characters).
func (p *podRuntime) hostname() string {
	pod := p.current()
	name := pod.Spec.Hostname
	if name == "" {
		name = pod.Name
	}
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-.")
	}
	return name
}

// writeEtc writes the pod's hosts, hostname and resolv.conf as the kubelet's managed files.
// DNS is the cluster's: kube-dns's Service address, CoreDNS behind it.
func (p *podRuntime) writeEtc() error {
	pod := p.current()
	dir := filepath.Join(p.dir, "etc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	host := p.hostname()
	hosts := "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n" +
		"fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n"
	if pod.Spec.Subdomain != "" {
		hosts += fmt.Sprintf("%s\t%s.%s.%s.svc.cluster.local\t%s\n", p.ip, host, pod.Spec.Subdomain, p.ns, host)
	} else {
		hosts += fmt.Sprintf("%s\t%s\n", p.ip, host)
	}
	if len(pod.Spec.HostAliases) > 0 {
		hosts += "\n# Entries added by HostAliases.\n"
		for _, a := range pod.Spec.HostAliases {
			hosts += a.IP + "\t" + strings.Join(a.Hostnames, "\t") + "\n"
		}
	}
	files := map[string]string{"hosts": hosts, "hostname": host + "\n", "resolv.conf": p.resolvConf()}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// resolvConf follows the pod's dnsPolicy: ClusterFirst (the default) searches the namespace's
// service domain with ndots:5; None takes dnsConfig alone; Default is the host's file.
func (p *podRuntime) resolvConf() string {
	pod := p.current()
	servers := []string{theNet.dnsServiceIP()}
	search := []string{p.ns + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}
	options := []string{"ndots:5"}
	switch pod.Spec.DNSPolicy {
	case corev1.DNSDefault:
		b, _ := os.ReadFile("/etc/resolv.conf")
		return string(b)
	case corev1.DNSNone:
		servers, search, options = nil, nil, nil
	}
	if c := pod.Spec.DNSConfig; c != nil {
		servers = append(servers, c.Nameservers...)
		search = append(search, c.Searches...)
		for _, o := range c.Options {
			if o.Value != nil {
				options = append(options, o.Name+":"+*o.Value)
			} else {
				options = append(options, o.Name)
			}
		}
	}
	var b strings.Builder
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(options) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(options, " "))
	}
	return b.String()
}

// writeProjectedVolumes fills each projected volume as the kubelet does: a token from the
// TokenRequest API bound to this pod, ConfigMap and Secret keys, and downward-API fields (the
// default kube-api-access volume is all three kinds). The token is not refreshed: tests end
// long before its expiry.
func (p *podRuntime) writeProjectedVolumes() error {
	ctx := context.Background()
	pod := p.current()
	core := p.n.client.CoreV1()
	for _, v := range pod.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		mode := int32(0o644)
		if v.Projected.DefaultMode != nil {
			mode = *v.Projected.DefaultMode
		}
		files := map[string]volumeFile{}
		for _, src := range v.Projected.Sources {
			switch {
			case src.ServiceAccountToken != nil:
				t := src.ServiceAccountToken
				req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
					ExpirationSeconds: t.ExpirationSeconds,
					BoundObjectRef:    &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
				}}
				if t.Audience != "" {
					req.Spec.Audiences = []string{t.Audience}
				}
				sa := pod.Spec.ServiceAccountName
				if sa == "" {
					sa = "default"
				}
				tok, err := core.ServiceAccounts(p.ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
				if err != nil {
					return fmt.Errorf("MountVolume.SetUp failed for volume %q: failed to fetch token: %v", v.Name, err)
				}
				files[t.Path] = volumeFile{[]byte(tok.Status.Token), mode}
			case src.ConfigMap != nil:
				cm, err := core.ConfigMaps(p.ns).Get(ctx, src.ConfigMap.Name, metav1.GetOptions{})
				if err != nil {
					if src.ConfigMap.Optional != nil && *src.ConfigMap.Optional {
						continue
					}
					return fmt.Errorf("MountVolume.SetUp failed for volume %q: configmap %q not found", v.Name, src.ConfigMap.Name)
				}
				data := map[string][]byte{}
				for k, s := range cm.Data {
					data[k] = []byte(s)
				}
				for k, b := range cm.BinaryData {
					data[k] = b
				}
				if err := keyFiles(files, data, src.ConfigMap.Items, mode, v.Name, "configmap"); err != nil {
					return err
				}
			case src.Secret != nil:
				s, err := core.Secrets(p.ns).Get(ctx, src.Secret.Name, metav1.GetOptions{})
				if err != nil {
					if src.Secret.Optional != nil && *src.Secret.Optional {
						continue
					}
					return fmt.Errorf("MountVolume.SetUp failed for volume %q: secret %q not found", v.Name, src.Secret.Name)
				}
				if err := keyFiles(files, s.Data, src.Secret.Items, mode, v.Name, "secret"); err != nil {
					return err
				}
			case src.DownwardAPI != nil:
				for _, it := range src.DownwardAPI.Items {
					if it.FieldRef == nil {
						continue
					}
					m := mode
					if it.Mode != nil {
						m = *it.Mode
					}
					files[it.Path] = volumeFile{[]byte(p.field(it.FieldRef.FieldPath)), m}
				}
			}
		}
		if err := p.writeVolume(v.Name, files); err != nil {
			return err
		}
	}
	return nil
}

// keyFiles adds a Secret's or ConfigMap's keys to a volume's files as the kubelet does: every
// key, or only the listed items (each in its own mode); a listed key that is missing is an error.
func keyFiles(files map[string]volumeFile, data map[string][]byte, items []corev1.KeyToPath, mode int32, volume, what string) error {
	if len(items) == 0 {
		for k, d := range data {
			files[k] = volumeFile{d, mode}
		}
	}
	for _, it := range items {
		d, ok := data[it.Key]
		if !ok {
			return fmt.Errorf("MountVolume.SetUp failed for volume %q: references non-existent %s key: %s", volume, what, it.Key)
		}
		m := mode
		if it.Mode != nil {
			m = *it.Mode
		}
		files[it.Path] = volumeFile{d, m}
	}
	return nil
}

// field is a downward-API field of the pod.
func (p *podRuntime) field(path string) string {
	pod := p.current()
	switch path {
	case "metadata.name":
		return pod.Name
	case "metadata.namespace":
		return pod.Namespace
	case "metadata.uid":
		return string(pod.UID)
	case "spec.nodeName":
		return nodeName
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName
	case "status.podIP":
		return p.ip
	case "status.hostIP":
		return "127.0.0.1"
	}
	if key, ok := strings.CutPrefix(path, "metadata.labels['"); ok {
		return pod.Labels[strings.TrimSuffix(key, "']")]
	}
	if key, ok := strings.CutPrefix(path, "metadata.annotations['"); ok {
		return pod.Annotations[strings.TrimSuffix(key, "']")]
	}
	return ""
}

// mountArgs are the sandbox helper's arguments for a container: its volumes at their mount
// paths (ro where asked) and the pod's managed /etc files, unless the container mounts its own.
func (c *container) mountArgs() []string {
	var args []string
	own := map[string]bool{}
	self, _ := os.Executable()
	for _, m := range c.spec.VolumeMounts {
		dir, err := c.pod.volumeDir(m.Name)
		if err != nil || hides(m.MountPath, c.pod.n.cfg.dir, c.pod.n.cfg.pgRoot, self) {
			continue
		}
		if m.SubPath != "" {
			dir = filepath.Join(dir, m.SubPath)
		}
		flag := "--bind"
		if m.ReadOnly {
			flag = "--ro-bind"
		}
		own[filepath.Clean(m.MountPath)] = true
		args = append(args, flag, dir+"="+m.MountPath)
	}
	for _, name := range []string{"hosts", "hostname", "resolv.conf"} {
		if !own["/etc/"+name] {
			args = append(args, "--bind", filepath.Join(c.pod.dir, "etc", name)+"=/etc/"+name)
		}
	}
	return append(args, "--hostname", c.pod.hostname(), "--uid", strconv.Itoa(c.pod.n.uid), "--gid", strconv.Itoa(c.pod.n.gid))
}

// hides tells whether a mount at path would cover one of the node's own directories (a
// volume at /tmp over a state directory in /tmp): the paths the node translates for postgres
// images and exec must stay reachable, so such a volume is left to that translation.
func hides(path string, own ...string) bool {
	path = filepath.Clean(path)
	for _, o := range own {
		if o != "" && (o == path || strings.HasPrefix(o, path+"/") || path == "/") {
			return true
		}
	}
	return false
}

// sandbox is the helper a container's main process starts as, already in the pod's network
// namespace and in new mount and UTS namespaces: it mounts, sets the host name, drops to the
// pod's user and execs the container's command.
func sandbox(args []string) {
	die := func(code int, format string, a ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", a...)
		os.Exit(code)
	}
	var uid, gid int
	var root, workdir string
	var groups []int
	type bind struct {
		src, dst string
		ro       bool
	}
	var binds []bind
	i := 0
	for ; i < len(args) && args[i] != "--"; i += 2 {
		if i+1 >= len(args) {
			die(126, "sandbox: %s needs a value", args[i])
		}
		val := args[i+1]
		switch args[i] {
		case "--bind", "--ro-bind":
			src, dst, _ := strings.Cut(val, "=")
			binds = append(binds, bind{src, dst, args[i] == "--ro-bind"})
		case "--hostname":
			if err := syscall.Sethostname([]byte(val)); err != nil {
				die(126, "sandbox: sethostname: %v", err)
			}
		case "--uid":
			uid, _ = strconv.Atoi(val)
		case "--gid":
			gid, _ = strconv.Atoi(val)
		case "--fail":
			die(126, "sandbox: %s", val)
		case "--root":
			root = val
		case "--workdir":
			workdir = val
		case "--groups":
			for _, g := range strings.Split(val, ",") {
				n, _ := strconv.Atoi(g)
				groups = append(groups, n)
			}
		}
	}
	argv := args[min(i+1, len(args)):]
	if len(argv) == 0 {
		die(126, "sandbox: no command")
	}
	if root == "" {
		if err := syscall.Mount("tmpfs", "/run", "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
			die(126, "sandbox: tmpfs on /run: %v", err)
		}
	}
	// Every source is opened before the first mount: a volume mounted at /tmp would hide the
	// sources under the node's state directory there.
	sources := make([]string, len(binds))
	infos := make([]os.FileInfo, len(binds))
	for i, b := range binds {
		fd, err := unix.Open(b.src, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			die(126, "sandbox: open %s: %v", b.src, err)
		}
		if infos[i], err = os.Stat(b.src); err != nil {
			die(126, "sandbox: %v", err)
		}
		sources[i] = fmt.Sprintf("/proc/self/fd/%d", fd)
	}
	if root != "" {
		var rb []rootBind
		for i, b := range binds {
			rb = append(rb, rootBind{src: sources[i], dst: b.dst, dir: infos[i].IsDir(), ro: b.ro})
		}
		if err := makeRoot(root, rb); err != nil {
			die(126, "sandbox: %v", err)
		}
		binds = nil
	}
	for i, b := range binds {
		info := infos[i]
		if _, err := os.Stat(b.dst); errors.Is(err, os.ErrNotExist) {
			// Only where a mount point can be made without touching the host's files.
			if !strings.HasPrefix(b.dst, "/run/") && !strings.HasPrefix(b.dst, "/var/run/") {
				continue
			}
			if info.IsDir() {
				err = os.MkdirAll(b.dst, 0o755)
			} else if err = os.MkdirAll(filepath.Dir(b.dst), 0o755); err == nil {
				err = os.WriteFile(b.dst, nil, 0o644)
			}
			if err != nil {
				die(126, "sandbox: mount point %s: %v", b.dst, err)
			}
		}
		if err := syscall.Mount(sources[i], b.dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			die(126, "sandbox: bind %s on %s: %v", b.src, b.dst, err)
		}
		if b.ro {
			if err := syscall.Mount("", b.dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				die(126, "sandbox: read-only %s: %v", b.dst, err)
			}
		}
	}
	if err := syscall.Setgroups(groups); err != nil {
		die(126, "sandbox: setgroups: %v", err)
	}
	if err := syscall.Setgid(gid); err != nil {
		die(126, "sandbox: setgid: %v", err)
	}
	if err := syscall.Setuid(uid); err != nil {
		die(126, "sandbox: setuid: %v", err)
	}
	if workdir != "" {
		if err := os.Chdir(workdir); err != nil {
			die(126, "sandbox: working directory %s: %v", workdir, err)
		}
	}
	if os.Getenv("PATH") == "" {
		_ = os.Setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		die(127, "exec: %q: executable file not found in $PATH", argv[0])
	}
	err = syscall.Exec(path, argv, os.Environ())
	die(126, "exec %s: %v", argv[0], err)
}
