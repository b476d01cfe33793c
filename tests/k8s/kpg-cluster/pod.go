package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// podRuntime is one pod on the node: its network namespace (its own loopback, as a real pod
// has), its volumes as host directories and one runner per container.
type podRuntime struct {
	n        *node
	ns, name string
	uid      string
	ip       string
	netns    string
	dir      string
	started  metav1.Time

	mu         sync.Mutex
	pod        *corev1.Pod
	containers map[string]*container
	ctx        context.Context
	cancel     context.CancelFunc
	gone       atomic.Bool
	killOnce   sync.Once
	killed     chan struct{}
	statusKick chan struct{}
}

func newPodRuntime(n *node, pod *corev1.Pod, ip string) *podRuntime {
	ctx, cancel := context.WithCancel(context.Background())
	p := &podRuntime{
		n: n, ns: pod.Namespace, name: pod.Name, uid: string(pod.UID), ip: ip,
		netns: theNet.podNetns(string(pod.UID)), dir: hostDir("pods", string(pod.UID)),
		pod: pod, containers: map[string]*container{}, ctx: ctx, cancel: cancel,
		killed: make(chan struct{}), statusKick: make(chan struct{}, 1), started: metav1.Now(),
	}
	return p
}

func (p *podRuntime) update(pod *corev1.Pod) {
	p.mu.Lock()
	p.pod = pod
	p.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		grace := 30 * time.Second
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		go p.terminate(grace)
	}
}

func (p *podRuntime) current() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pod
}

func (p *podRuntime) run() {
	if err := os.MkdirAll(p.dir, 0o755); err != nil {
		p.n.recorder.Eventf(p.pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
		return
	}
	if out, err := exec.Command("ip", "netns", "add", p.netns).CombinedOutput(); err != nil && !strings.Contains(string(out), "File exists") {
		p.n.recorder.Eventf(p.pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %s", out)
		return
	}
	_ = ipCmd(p.netns, "link", "set", "lo", "up")
	// eth0 on the node's bridge, with the pod's address: a connection to it is not a loopback
	// one (pg_hba tells them apart), and other pods, Services and the host reach it.
	if p.ip == "" {
		p.n.recorder.Eventf(p.pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: no free address in %s", theNet.podCIDR())
		return
	}
	if err := theNet.attach(p.netns, p.ip); err != nil {
		p.n.recorder.Eventf(p.pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
		return
	}
	go p.statusLoop()
	pod := p.current()
	if pod.DeletionTimestamp != nil {
		p.update(pod)
		return
	}
	waiting := "ContainerCreating"
	if len(pod.Spec.InitContainers) > 0 {
		waiting = "PodInitializing"
	}
	add := func(spec corev1.Container, init bool, reason string) {
		c := &container{pod: p, spec: spec, init: init, state: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason}}}
		p.mu.Lock()
		p.containers[spec.Name] = c
		p.mu.Unlock()
	}
	for _, spec := range pod.Spec.InitContainers {
		add(spec, true, "PodInitializing")
	}
	for _, spec := range pod.Spec.Containers {
		add(spec, false, waiting)
	}
	p.kick()
	go func() {
		// As the kubelet: each init container to completion, in order, then the main ones.
		for _, c := range p.inits() {
			if !c.loop() {
				return
			}
		}
		for _, c := range p.sortedContainers() {
			go c.loop()
		}
	}()
}

// sortedContainers is the pod's main containers in spec order.
func (p *podRuntime) sortedContainers() []*container {
	return p.ordered(func(s *corev1.PodSpec) []corev1.Container { return s.Containers })
}

// inits is the pod's init containers in spec order.
func (p *podRuntime) inits() []*container {
	return p.ordered(func(s *corev1.PodSpec) []corev1.Container { return s.InitContainers })
}

func (p *podRuntime) allContainers() []*container {
	return append(p.inits(), p.sortedContainers()...)
}

func (p *podRuntime) ordered(specs func(*corev1.PodSpec) []corev1.Container) []*container {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []*container
	for _, spec := range specs(&p.pod.Spec) {
		if c, ok := p.containers[spec.Name]; ok {
			out = append(out, c)
		}
	}
	return out
}

func (p *podRuntime) kick() {
	select {
	case p.statusKick <- struct{}{}:
	default:
	}
}

// statusLoop writes the pod's status whenever a container changes, coalescing bursts.
func (p *podRuntime) statusLoop() {
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.statusKick:
		}
		if p.gone.Load() {
			return
		}
		p.writeStatus()
	}
}

func (p *podRuntime) writeStatus() {
	pods := p.n.client.CoreV1().Pods(p.ns)
	_ = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		live, err := pods.Get(context.Background(), p.name, metav1.GetOptions{})
		if err != nil || string(live.UID) != p.uid {
			return nil
		}
		status := p.status(live)
		live.Status = status
		_, err = pods.UpdateStatus(context.Background(), live, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

func (p *podRuntime) status(live *corev1.Pod) corev1.PodStatus {
	st := live.Status
	st.HostIP = "127.0.0.1"
	st.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	st.PodIP = p.ip
	st.PodIPs = []corev1.PodIP{{IP: p.ip}}
	st.StartTime = &p.started
	var inits []corev1.ContainerStatus
	initialized := true
	initFailed := false
	var incomplete []string
	for _, c := range p.inits() {
		cs := c.snapshot()
		cs.Started = nil
		inits = append(inits, cs)
		if t := cs.State.Terminated; t == nil || t.ExitCode != 0 {
			initialized = false
			incomplete = append(incomplete, cs.Name)
			initFailed = initFailed || t != nil
		}
	}
	st.InitContainerStatuses = inits
	var statuses []corev1.ContainerStatus
	allReady, anyRunning, allStartedOnce := true, false, true
	allDone, anyFailed := true, false
	for _, c := range p.sortedContainers() {
		cs := c.snapshot()
		statuses = append(statuses, cs)
		if !cs.Ready {
			allReady = false
		}
		if cs.State.Running != nil || cs.RestartCount > 0 {
			anyRunning = true
		}
		if cs.State.Running == nil && cs.RestartCount == 0 && cs.State.Terminated == nil {
			allStartedOnce = false
		}
		if t := cs.State.Terminated; t == nil {
			allDone = false
		} else if t.ExitCode != 0 {
			anyFailed = true
		} else {
			anyRunning = true
		}
	}
	st.ContainerStatuses = statuses
	// The kubelet's getPhase: a Never init container's failure fails the pod; once every main
	// container is terminated for good (only Never and OnFailure leave one so), the pod
	// Succeeded if all exited 0, else Failed.
	switch {
	case initFailed:
		st.Phase = corev1.PodFailed
	case len(statuses) > 0 && allDone && !anyFailed:
		st.Phase = corev1.PodSucceeded
	case len(statuses) > 0 && allDone:
		st.Phase = corev1.PodFailed
	case initialized && anyRunning && allStartedOnce:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	if len(statuses) == 0 {
		allReady = false
	}
	set := func(t corev1.PodConditionType, ok bool, reason, message string) {
		status := corev1.ConditionFalse
		if ok {
			status = corev1.ConditionTrue
			reason, message = "", ""
		}
		for i := range st.Conditions {
			if st.Conditions[i].Type == t {
				if st.Conditions[i].Status != status {
					st.Conditions[i].LastTransitionTime = metav1.Now()
				}
				st.Conditions[i].Status, st.Conditions[i].Reason, st.Conditions[i].Message = status, reason, message
				return
			}
		}
		st.Conditions = append(st.Conditions, corev1.PodCondition{Type: t, Status: status, Reason: reason, Message: message, LastTransitionTime: metav1.Now()})
	}
	var notReady []string
	for _, cs := range statuses {
		if !cs.Ready {
			notReady = append(notReady, cs.Name)
		}
	}
	msg, reason := "", "ContainersNotReady"
	if len(notReady) > 0 {
		msg = fmt.Sprintf("containers with unready status: [%s]", strings.Join(notReady, " "))
	}
	if st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		reason, msg = "PodCompleted", ""
	}
	initMsg := ""
	if len(incomplete) > 0 {
		initMsg = fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(incomplete, " "))
	}
	set("PodReadyToStartContainers", true, "", "")
	set(corev1.PodInitialized, initialized, "ContainersNotInitialized", initMsg)
	set(corev1.ContainersReady, allReady, reason, msg)
	set(corev1.PodReady, allReady, reason, msg)
	return st
}

// terminate stops the containers as the kubelet does on a graceful delete (the image's stop
// signal, SIGKILL after the grace period), then removes the pod object.
func (p *podRuntime) terminate(grace time.Duration) {
	p.kill(grace)
	pods := p.n.client.CoreV1().Pods(p.ns)
	uid := p.current().UID
	_ = pods.Delete(context.Background(), p.name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64),
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
}

func (p *podRuntime) kill(grace time.Duration) {
	p.killOnce.Do(func() {
		if pod := p.current(); pod != nil {
			for _, c := range p.allContainers() {
				if c.running() {
					p.n.recorder.Eventf(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.spec.Name)
				}
			}
		}
		p.gone.Store(true)
		var wg sync.WaitGroup
		for _, c := range p.allContainers() {
			wg.Add(1)
			go func() { defer wg.Done(); c.stop(grace) }()
		}
		wg.Wait()
		p.cancel()
		_ = exec.Command("ip", "netns", "del", p.netns).Run()
		theNet.release(p.ip)
		close(p.killed)
	})
	<-p.killed
}

// hostPath maps a path inside the container to the host directory that backs it: the
// volume mounted at the longest matching mountPath, else the container's own writable layer.
func (p *podRuntime) hostPath(c *corev1.Container, path string) (string, bool) {
	best, host := "", ""
	for _, m := range c.VolumeMounts {
		mp := strings.TrimSuffix(m.MountPath, "/")
		if (path == mp || strings.HasPrefix(path, mp+"/")) && len(mp) > len(best) {
			dir, err := p.volumeDir(m.Name)
			if err != nil {
				continue
			}
			if m.SubPath != "" {
				dir = filepath.Join(dir, m.SubPath)
			}
			best, host = mp, filepath.Join(dir, strings.TrimPrefix(path, mp))
		}
	}
	if best != "" {
		return host, true
	}
	return filepath.Join(p.dir, "rootfs", c.Name, path), false
}

// volumeDir is the host directory of a pod volume: an emptyDir under the pod, a claim's
// provisioned hostPath directory.
func (p *podRuntime) volumeDir(name string) (string, error) {
	pod := p.current()
	for _, v := range pod.Spec.Volumes {
		if v.Name != name {
			continue
		}
		switch {
		case v.EmptyDir != nil:
			dir := filepath.Join(p.dir, "volumes", name)
			uid, gid := p.volumeOwner()
			return dir, ensureDir(dir, uid, gid, 0o777)
		case v.PersistentVolumeClaim != nil:
			dir, err := claimDir(p.n, p.ns, v.PersistentVolumeClaim.ClaimName)
			if err == nil && p.rooted() {
				// fsGroup's ownership, as the kubelet applies it to the volume's root.
				uid, gid := p.volumeOwner()
				err = ensureDir(dir, uid, gid, 0o2775)
			}
			return dir, err
		case v.HostPath != nil:
			return v.HostPath.Path, nil
		default:
			dir := filepath.Join(p.dir, "volumes", name)
			return dir, ensureDir(dir, p.n.uid, p.n.gid, 0o755)
		}
	}
	return "", fmt.Errorf("volume %q not found", name)
}

// writeSecretVolumes fills each Secret volume's directory with the Secret's keys (or the listed
// items) as the kubelet does, in defaultMode (or an item's mode). The files belong to the pod's
// user, as fsGroup makes them readable to it on a real node. A missing Secret or key is an
// error unless the volume is optional.
func (p *podRuntime) writeSecretVolumes() error {
	for _, v := range p.current().Spec.Volumes {
		if v.Secret == nil {
			continue
		}
		optional := v.Secret.Optional != nil && *v.Secret.Optional
		s, err := p.n.client.CoreV1().Secrets(p.ns).Get(context.Background(), v.Secret.SecretName, metav1.GetOptions{})
		if err != nil {
			if optional {
				continue
			}
			return fmt.Errorf("MountVolume.SetUp failed for volume %q: secret %q not found", v.Name, v.Secret.SecretName)
		}
		mode := int32(0o644)
		if v.Secret.DefaultMode != nil {
			mode = *v.Secret.DefaultMode
		}
		files := map[string]volumeFile{}
		if err := keyFiles(files, s.Data, v.Secret.Items, mode, v.Name, "secret"); err != nil {
			return err
		}
		if err := p.writeVolume(v.Name, files); err != nil {
			return err
		}
	}
	return nil
}

type volumeFile struct {
	data []byte
	mode int32
}

// writeVolume replaces the contents of a volume's directory with these files, owned by the
// pod's user. The directory itself stays: a running sibling container has it mounted.
func (p *podRuntime) writeVolume(name string, files map[string]volumeFile) error {
	dir := filepath.Join(p.dir, "volumes", name)
	uid, gid := p.volumeOwner()
	if err := ensureDir(dir, uid, gid, 0o755); err != nil {
		return err
	}
	old, _ := os.ReadDir(dir)
	for _, e := range old {
		_ = os.RemoveAll(filepath.Join(dir, e.Name()))
	}
	for name, f := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, f.data, os.FileMode(f.mode)); err != nil {
			return err
		}
		_ = os.Chmod(path, os.FileMode(f.mode))
		if err := os.Chown(path, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func ensureDir(dir string, uid, gid int, mode os.FileMode) error {
	if err := os.MkdirAll(dir, mode); err != nil {
		return err
	}
	_ = os.Chmod(dir, mode)
	return os.Chown(dir, uid, gid)
}

// command runs argv inside the pod's network namespace (and the namespaces ns names, nsenter's
// options) as the pod's unprivileged user.
func (p *podRuntime) command(ctx context.Context, env []string, ns []string, uid, gid int, argv ...string) *exec.Cmd {
	args := append([]string{"--net=/run/netns/" + p.netns}, ns...)
	args = append(args, fmt.Sprintf("--setuid=%d", uid), fmt.Sprintf("--setgid=%d", gid), "--")
	return groupCommand(ctx, env, append(args, argv...))
}

// groupCommand is nsenter with these arguments in a process group of its own, killed whole.
func groupCommand(ctx context.Context, env []string, args []string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "nsenter", args...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	return cmd
}
