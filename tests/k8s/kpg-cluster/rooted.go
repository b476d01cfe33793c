package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// Rooted containers: CloudNativePG's. Its images are not emulated as the postgres image is:
// the operator image's /manager copies itself to /controller, and the instance manager runs
// PostgreSQL's own binaries as uid 26 under /controller, /run and /var/lib/postgresql/data.
// So each such container gets a root of its own: a tmpfs holding the host's /usr and /etc
// read-only (with the pod's /etc files and an account for its uid over them), /proc, /sys,
// /dev, a fresh /tmp, its volumes at their mount paths, and the image's binaries: /manager for
// the operator image, the major's full set of binaries (first on PATH) for a postgres image.
// It runs as its securityContext's user, with fsGroup as a supplementary group.

const (
	cnpgImage         = "ghcr.io/cloudnative-pg/cloudnative-pg"
	cnpgPostgresImage = "ghcr.io/cloudnative-pg/postgresql"
	defaultPath       = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
)

// rooted tells whether the pod's containers run in roots of their own: a CloudNativePG pod
// (its instances and Jobs carry cnpg.io/cluster) or any pod that runs the operator's image.
func (p *podRuntime) rooted() bool {
	pod := p.current()
	if _, ok := pod.Labels["cnpg.io/cluster"]; ok {
		return true
	}
	for _, c := range append(append([]corev1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...) {
		if strings.HasPrefix(c.Image, cnpgImage+":") || strings.HasPrefix(c.Image, cnpgImage+"@") {
			return true
		}
	}
	return false
}

// identity is who a container's processes run as. Rooted containers honour runAsUser,
// runAsGroup and fsGroup; the others run as the node's unprivileged account, which the
// postgres image's emulation relies on.
func (c *container) identity() (uid, gid int, groups []int) {
	uid, gid = c.pod.n.uid, c.pod.n.gid
	if !c.pod.rooted() {
		return uid, gid, nil
	}
	pod := c.pod.current()
	if sc := pod.Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = int(*sc.RunAsUser)
		}
		if sc.RunAsGroup != nil {
			gid = int(*sc.RunAsGroup)
		}
		if sc.FSGroup != nil {
			groups = append(groups, int(*sc.FSGroup))
		}
		for _, g := range sc.SupplementalGroups {
			groups = append(groups, int(g))
		}
	}
	if sc := c.spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = int(*sc.RunAsUser)
		}
		if sc.RunAsGroup != nil {
			gid = int(*sc.RunAsGroup)
		}
	}
	return uid, gid, groups
}

// volumeOwner is who owns a rooted pod's volumes: its user and fsGroup, as the kubelet's
// ownership management gives them; the node's account for the other pods.
func (p *podRuntime) volumeOwner() (int, int) {
	if !p.rooted() {
		return p.n.uid, p.n.gid
	}
	uid, gid := p.n.uid, p.n.gid
	if sc := p.current().Spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = int(*sc.RunAsUser)
		}
		if sc.RunAsGroup != nil {
			gid = int(*sc.RunAsGroup)
		}
		if sc.FSGroup != nil {
			gid = int(*sc.FSGroup)
		}
	}
	return uid, gid
}

// rootArgs are the sandbox helper's arguments for a rooted container: the root's directory,
// the image's binaries, the pod's account files, then its volumes and /etc files.
func (c *container) rootArgs() ([]string, error) {
	uid, gid, groups := c.identity()
	root := filepath.Join(c.pod.dir, "roots", c.spec.Name)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	args := []string{"--root", root}
	switch c.image.kind {
	case imageOperator:
		args = append(args, "--ro-bind", c.image.bin+"=/manager")
	default:
		if c.image.bin != "" {
			// The major's installation at its own path, so PATH can name it.
			dir := filepath.Dir(c.image.bin)
			args = append(args, "--ro-bind", dir+"="+dir)
		}
	}
	if err := c.pod.writeAccounts(uid, gid); err != nil {
		return nil, err
	}
	args = append(args,
		"--ro-bind", filepath.Join(c.pod.dir, "etc", "passwd")+"=/etc/passwd",
		"--ro-bind", filepath.Join(c.pod.dir, "etc", "group")+"=/etc/group")
	vuid, vgid := c.pod.volumeOwner()
	for _, m := range c.spec.VolumeMounts {
		dir, err := c.pod.volumeDir(m.Name)
		if err != nil {
			return nil, err
		}
		if m.SubPath != "" {
			dir = filepath.Join(dir, m.SubPath)
			if err := ensureDir(dir, vuid, vgid, 0o775); err != nil {
				return nil, err
			}
		}
		flag := "--bind"
		if m.ReadOnly {
			flag = "--ro-bind"
		}
		args = append(args, flag, dir+"="+m.MountPath)
	}
	own := map[string]bool{}
	for _, m := range c.spec.VolumeMounts {
		own[filepath.Clean(m.MountPath)] = true
	}
	for _, name := range []string{"hosts", "hostname", "resolv.conf"} {
		if !own["/etc/"+name] {
			args = append(args, "--ro-bind", filepath.Join(c.pod.dir, "etc", name)+"=/etc/"+name)
		}
	}
	var list []string
	for _, g := range groups {
		list = append(list, strconv.Itoa(g))
	}
	args = append(args, "--hostname", c.pod.hostname(), "--uid", strconv.Itoa(uid), "--gid", strconv.Itoa(gid))
	if len(list) > 0 {
		args = append(args, "--groups", strings.Join(list, ","))
	}
	if c.spec.WorkingDir != "" {
		args = append(args, "--workdir", c.spec.WorkingDir)
	}
	return args, nil
}

// writeAccounts writes the pod's passwd and group: the host's, with an account for a uid the
// host lacks (named postgres for 26, as in PostgreSQL images): initdb and the instance
// manager look their user up.
func (p *podRuntime) writeAccounts(uid, gid int) error {
	dir := filepath.Join(p.dir, "etc")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, f := range []struct {
		file, line string
		id         int
	}{
		{"passwd", fmt.Sprintf("%%s:x:%d:%d:PostgreSQL:/var/lib/postgresql:/bin/sh", uid, gid), uid},
		{"group", fmt.Sprintf("%%s:x:%d:", gid), gid},
	} {
		b, err := os.ReadFile("/etc/" + f.file)
		if err != nil {
			return err
		}
		var keep []string
		known, name := false, "postgres"
		for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			fields := strings.Split(l, ":")
			if len(fields) > 2 && fields[2] == strconv.Itoa(f.id) {
				known = true
			}
			keep = append(keep, l)
		}
		if !known {
			// The new account takes the name; the host's account of that name is left out.
			out := keep[:0]
			for _, l := range keep {
				if !strings.HasPrefix(l, name+":") {
					out = append(out, l)
				}
			}
			keep = append(out, fmt.Sprintf(f.line, name))
		}
		if err := os.WriteFile(filepath.Join(dir, f.file), []byte(strings.Join(keep, "\n")+"\n"), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// makeRoot builds a rooted container's root at dir and pivots into it. binds are mounted
// in order of depth, so /run comes before /run/secrets/…; sources are already open (fds).
func makeRoot(dir string, binds []rootBind) error {
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("tmpfs root: %w", err)
	}
	at := func(p string) string { return filepath.Join(dir, p) }
	// Debian's merged /usr: /bin, /sbin, /lib and /lib64 are links into it.
	for _, top := range []string{"bin", "sbin", "lib", "lib64"} {
		if target, err := os.Readlink("/" + top); err == nil {
			if err := os.Symlink(target, at(top)); err != nil {
				return err
			}
		}
	}
	for _, d := range []string{"usr", "etc", "proc", "sys", "dev", "tmp", "run", "var/tmp", "var/lib", "root", "home"} {
		if err := os.MkdirAll(at(d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Symlink("../run", at("var/run")); err != nil {
		return err
	}
	for _, m := range []struct {
		src, dst string
		flags    uintptr
		ro       bool
	}{
		{"/usr", "usr", syscall.MS_BIND | syscall.MS_REC, true},
		{"/etc", "etc", syscall.MS_BIND | syscall.MS_REC, true},
		{"/proc", "proc", syscall.MS_BIND | syscall.MS_REC, false},
		{"/sys", "sys", syscall.MS_BIND | syscall.MS_REC, false},
		{"/dev", "dev", syscall.MS_BIND | syscall.MS_REC, false},
	} {
		if err := syscall.Mount(m.src, at(m.dst), "", m.flags, ""); err != nil {
			return fmt.Errorf("bind %s: %w", m.src, err)
		}
		if m.ro {
			if err := syscall.Mount("", at(m.dst), "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY|syscall.MS_REC, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", m.src, err)
			}
		}
	}
	for _, t := range []string{"tmp", "var/tmp"} {
		if err := syscall.Mount("tmpfs", at(t), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=1777"); err != nil {
			return err
		}
	}
	if err := syscall.Mount("tmpfs", at("run"), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "mode=0755"); err != nil {
		return err
	}
	sort.SliceStable(binds, func(i, j int) bool {
		return strings.Count(filepath.Clean(binds[i].dst), "/") < strings.Count(filepath.Clean(binds[j].dst), "/")
	})
	for _, b := range binds {
		dst := at(b.dst)
		var err error
		if b.dir {
			err = os.MkdirAll(dst, 0o755)
		} else if err = os.MkdirAll(filepath.Dir(dst), 0o755); err == nil {
			if _, statErr := os.Lstat(dst); statErr != nil {
				err = os.WriteFile(dst, nil, 0o644)
			}
		}
		if err != nil {
			return fmt.Errorf("mount point %s: %w", b.dst, err)
		}
		if err := syscall.Mount(b.src, dst, "", syscall.MS_BIND|syscall.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s: %w", b.dst, err)
		}
		if b.ro {
			if err := syscall.Mount("", dst, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("read-only %s: %w", b.dst, err)
			}
		}
	}
	old := at(".oldroot")
	if err := os.MkdirAll(old, 0o700); err != nil {
		return err
	}
	if err := unix.PivotRoot(dir, old); err != nil {
		return fmt.Errorf("pivot_root: %w", err)
	}
	if err := os.Chdir("/"); err != nil {
		return err
	}
	if err := unix.Unmount("/.oldroot", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	return os.Remove("/.oldroot")
}

// rootBind is one bind mount into a rooted container: an open source (/proc/self/fd/N), the
// path inside the root, whether the source is a directory and whether it is read-only.
type rootBind struct {
	src, dst string
	dir, ro  bool
}

// cnpgVersion is the one operator image this node can run: the version built by setup.sh.
const cnpgVersion = "1.30.0"
