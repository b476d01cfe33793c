package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// container runs one container of a pod with the kubelet's restart policy, back-off, probes
// and status fields.
type container struct {
	pod  *podRuntime
	spec corev1.Container

	mu           sync.Mutex
	state        corev1.ContainerState
	lastState    corev1.ContainerState
	restarts     int32
	ready        bool
	startedProbe bool
	proc         *exec.Cmd
	done         chan struct{}
	stopped      bool
	image        image
	env          []string
	// init marks an init container: it runs to completion before the main containers.
	init bool
}

func (c *container) snapshot() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	started := c.state.Running != nil && c.startedProbe
	return corev1.ContainerStatus{
		Name:                 c.spec.Name,
		Image:                c.spec.Image,
		ImageID:              c.image.id(),
		ContainerID:          fmt.Sprintf("kpg://%s-%s-%d", c.pod.uid[:8], c.spec.Name, c.restarts),
		State:                c.state,
		LastTerminationState: c.lastState,
		Ready:                c.ready && c.state.Running != nil,
		Started:              &started,
		RestartCount:         c.restarts,
	}
}

func (c *container) running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil
}

func (c *container) set(f func()) {
	c.mu.Lock()
	f()
	c.mu.Unlock()
	c.pod.kick()
}

func (c *container) event(kind, reason, format string, args ...any) {
	c.pod.n.recorder.Eventf(c.pod.current(), kind, reason, format, args...)
}

func (c *container) logPath(restart int32) string {
	return filepath.Join(c.pod.dir, "logs", c.spec.Name, fmt.Sprintf("%d.log", restart))
}

// loop is the kubelet's sync for one container: pull, create, start, wait, back off, restart.
// It returns once the container is terminated for good (restartPolicy, or an init container's
// success), true if it exited 0; false also when the pod goes away.
func (c *container) loop() bool {
	backoff := 10 * time.Second
	pullBackoff := 10 * time.Second
	crashed := false
	for !c.pod.gone.Load() {
		img, err := resolveImage(c.spec.Image, c.pod.n.cfg.pgRoot)
		if err != nil {
			c.event(corev1.EventTypeNormal, "Pulling", "Pulling image %q", c.spec.Image)
			c.event(corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %v", c.spec.Image, err)
			c.event(corev1.EventTypeWarning, "Failed", "Error: ErrImagePull")
			c.set(func() {
				c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull", Message: fmt.Sprintf("failed to pull and unpack image %q: %v", c.spec.Image, err)}}
			})
			if !c.sleep(2 * time.Second) {
				return false
			}
			c.event(corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.spec.Image)
			c.event(corev1.EventTypeWarning, "Failed", "Error: ImagePullBackOff")
			c.set(func() {
				c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff", Message: fmt.Sprintf("Back-off pulling image %q", c.spec.Image)}}
			})
			if !c.sleep(pullBackoff) {
				return false
			}
			pullBackoff = min(pullBackoff*2, 5*time.Minute)
			continue
		}
		if img.kind == imagePostgres && c.pod.rooted() {
			img.kind = imageRooted
		}
		c.mu.Lock()
		c.image = img
		c.mu.Unlock()
		env, err := c.resolveEnv()
		if err == nil {
			err = c.pod.writeSecretVolumes()
		}
		if err == nil {
			err = c.pod.writeProjectedVolumes()
		}
		if err == nil {
			err = c.pod.writeEtc()
		}
		if err != nil {
			c.event(corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.spec.Image)
			c.event(corev1.EventTypeWarning, "Failed", "Error: %v", err)
			c.set(func() {
				c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CreateContainerConfigError", Message: err.Error()}}
			})
			if !c.sleep(5 * time.Second) {
				return false
			}
			continue
		}
		c.event(corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.spec.Image)
		c.event(corev1.EventTypeNormal, "Created", "Created container: %s", c.spec.Name)
		began := time.Now()
		code, reason, err := c.runOnce(env)
		if c.pod.gone.Load() {
			return false
		}
		if err != nil {
			c.event(corev1.EventTypeWarning, "Failed", "Error: %v", err)
		}
		finished := metav1.Now()
		c.set(func() {
			c.lastState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: int32(code), Reason: reason, StartedAt: metav1.NewTime(began), FinishedAt: finished,
				ContainerID: fmt.Sprintf("kpg://%s-%s-%d", c.pod.uid[:8], c.spec.Name, c.restarts),
			}}
			c.restarts++
			c.ready, c.startedProbe = false, false
		})
		policy := c.pod.current().Spec.RestartPolicy
		// An init container that succeeded is done whatever the policy; one that failed is
		// retried unless the policy is Never (then the pod fails).
		if policy == corev1.RestartPolicyNever || (code == 0 && (c.init || policy == corev1.RestartPolicyOnFailure)) {
			c.set(func() { c.state, c.lastState = c.lastState, corev1.ContainerState{}; c.restarts-- })
			return code == 0
		}
		if time.Since(began) > 10*time.Minute {
			backoff, crashed = 10*time.Second, false
		}
		// As the kubelet: the first exit restarts at once, back-off starts with the second.
		if !crashed {
			crashed = true
			continue
		}
		message := fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", backoff, c.spec.Name, c.pod.name, c.pod.ns, c.pod.uid)
		c.event(corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s_%s(%s)", c.spec.Name, c.pod.name, c.pod.ns, c.pod.uid)
		c.set(func() {
			c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: message}}
		})
		if !c.sleep(backoff) {
			return false
		}
		backoff = min(backoff*2, 5*time.Minute)
	}
	return false
}

func (c *container) sleep(d time.Duration) bool {
	select {
	case <-c.pod.ctx.Done():
		return false
	case <-time.After(d):
		return !c.pod.gone.Load()
	}
}

// runOnce starts the container's process, runs its probes and waits for it to exit.
func (c *container) runOnce(env []string) (int, string, error) {
	logFile := c.logPath(c.restarts)
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return 128, "ContainerCannotRun", err
	}
	log, err := os.Create(logFile)
	if err != nil {
		return 128, "ContainerCannotRun", err
	}
	defer log.Close()
	out := &lineWriter{w: log, stream: "stderr"}
	cmd, err := c.process(env, out)
	if err != nil {
		return 128, "ContainerCannotRun", err
	}
	if err := cmd.Start(); err != nil {
		return 128, "ContainerCannotRun", err
	}
	done := make(chan struct{})
	c.set(func() {
		c.proc, c.done = cmd, done
		c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
		c.startedProbe = c.spec.StartupProbe == nil
		c.ready = false
	})
	c.event(corev1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	probeCtx, stopProbes := context.WithCancel(c.pod.ctx)
	go c.probe(probeCtx, env)
	err = cmd.Wait()
	// As when a container's PID 1 exits: whatever it left behind in the container dies too.
	_ = killGroup(cmd.Process.Pid)
	stopProbes()
	close(done)
	c.set(func() { c.proc = nil })
	out.flush()
	code := 0
	if err != nil {
		code = 1
		if exit, ok := err.(*exec.ExitError); ok {
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			} else {
				code = exit.ExitCode()
			}
		}
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	return code, reason, nil
}

// process builds the container's process: for a postgres image the official entrypoint's
// work (initialise PGDATA once, then the server), for the plain images a command or a pause.
func (c *container) process(env []string, out io.Writer) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var argv []string
	sandboxArgs := c.mountArgs
	switch c.image.kind {
	case imageOperator, imageRooted:
		argv = append(append([]string{}, c.spec.Command...), c.spec.Args...)
		if len(argv) == 0 {
			return nil, fmt.Errorf("the image %s has no default command on this node: give one", c.spec.Image)
		}
		sandboxArgs = func() []string {
			args, err := c.rootArgs()
			if err != nil {
				return []string{"--fail", err.Error()}
			}
			return args
		}
	case imagePostgres:
		argv = append([]string{self, "entrypoint"}, append(c.spec.Command, c.spec.Args...)...)
		env = append(env, "KPG_BIN="+c.image.bin, "KPG_CLIENTS="+clientsBin(c.pod.n.cfg.pgRoot), "KPG_MAJOR="+strconv.Itoa(c.image.major))
		env = append(env, c.mountEnv()...)
	default:
		argv = append(append([]string{}, c.spec.Command...), c.spec.Args...)
		if len(argv) == 0 {
			argv = []string{"sleep", "infinity"}
		}
	}
	// The sandbox helper mounts and drops to the pod's user itself, in mount and UTS
	// namespaces of the container's own.
	args := append([]string{"--net=/run/netns/" + c.pod.netns, "--", self, "sandbox"}, sandboxArgs()...)
	cmd := groupCommand(context.Background(), env, append(append(args, "--"), argv...))
	cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS
	cmd.Stdout, cmd.Stderr = out, out
	return cmd, nil
}

// command runs argv in the container: the pod's network namespace and, while its main process
// runs, that process's mount and UTS namespaces (its volumes, /etc files and host name).
func (c *container) command(ctx context.Context, env []string, argv ...string) *exec.Cmd {
	c.mu.Lock()
	proc := c.proc
	c.mu.Unlock()
	var ns []string
	if proc != nil && proc.Process != nil {
		ns = []string{fmt.Sprintf("--mount=/proc/%d/ns/mnt", proc.Process.Pid), fmt.Sprintf("--uts=/proc/%d/ns/uts", proc.Process.Pid)}
	}
	uid, gid, _ := c.identity()
	return c.pod.command(ctx, env, ns, uid, gid, argv...)
}

// mountEnv tells the entrypoint which host directories back the container's paths.
func (c *container) mountEnv() []string {
	var out []string
	for i, m := range c.spec.VolumeMounts {
		host, _ := c.pod.hostPath(&c.spec, m.MountPath)
		out = append(out, fmt.Sprintf("KPG_MOUNT_%d=%s=%s", i, m.MountPath, host))
	}
	root, _ := c.pod.hostPath(&c.spec, "/")
	_ = ensureDir(root, c.pod.n.uid, c.pod.n.gid, 0o755)
	ro := c.spec.SecurityContext != nil && c.spec.SecurityContext.ReadOnlyRootFilesystem != nil && *c.spec.SecurityContext.ReadOnlyRootFilesystem
	out = append(out, "KPG_ROOTFS="+root, fmt.Sprintf("KPG_READONLY_ROOT=%t", ro))
	return out
}

// stop sends the image's stop signal, then SIGKILL after the grace period. The postgres
// image's STOPSIGNAL is SIGINT (fast shutdown); other images have the runtime's default, SIGTERM,
// which goes to the container's main process alone, as to a container's PID 1.
func (c *container) stop(grace time.Duration) {
	c.mu.Lock()
	proc, done, kind := c.proc, c.done, c.image.kind
	c.stopped = true
	c.mu.Unlock()
	if proc == nil || proc.Process == nil {
		return
	}
	if kind == imagePostgres {
		_ = syscall.Kill(-proc.Process.Pid, syscall.SIGINT)
	} else {
		_ = syscall.Kill(proc.Process.Pid, syscall.SIGTERM)
	}
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-proc.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// resolveEnv builds the container's environment as the kubelet does: literals, Secret and
// ConfigMap keys, field references; a missing Secret or key is CreateContainerConfigError.
func (c *container) resolveEnv() ([]string, error) {
	ctx := context.Background()
	client := c.pod.n.client.CoreV1()
	pod := c.pod.current()
	// The apiserver as the kubernetes Service's variables name it: its ClusterIP on port 443.
	api := theNet.apiServiceIP()
	path := defaultPath
	if c.image.kind == imageRooted {
		path = c.image.bin + ":" + path
	}
	env := []string{"PATH=" + path, "HOSTNAME=" + c.pod.hostname(), "HOME=/root", "LANG=C.UTF-8",
		"KUBERNETES_SERVICE_HOST=" + api, "KUBERNETES_SERVICE_PORT=443", "KUBERNETES_SERVICE_PORT_HTTPS=443",
		"KUBERNETES_PORT=tcp://" + api + ":443", "KUBERNETES_PORT_443_TCP=tcp://" + api + ":443", "KUBERNETES_PORT_443_TCP_PROTO=tcp",
		"KUBERNETES_PORT_443_TCP_ADDR=" + api, "KUBERNETES_PORT_443_TCP_PORT=443"}
	values := map[string]string{}
	expand := func(s string) string {
		return os.Expand(s, func(k string) string {
			if v, ok := values[k]; ok {
				return v
			}
			return "$(" + k + ")"
		})
	}
	for _, from := range c.spec.EnvFrom {
		switch {
		case from.SecretRef != nil:
			s, err := client.Secrets(pod.Namespace).Get(ctx, from.SecretRef.Name, metav1.GetOptions{})
			if err != nil {
				if from.SecretRef.Optional != nil && *from.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("secret %q not found", from.SecretRef.Name)
			}
			for k, v := range s.Data {
				values[from.Prefix+k] = string(v)
			}
		case from.ConfigMapRef != nil:
			cm, err := client.ConfigMaps(pod.Namespace).Get(ctx, from.ConfigMapRef.Name, metav1.GetOptions{})
			if err != nil {
				if from.ConfigMapRef.Optional != nil && *from.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("configmap %q not found", from.ConfigMapRef.Name)
			}
			for k, v := range cm.Data {
				values[from.Prefix+k] = v
			}
		}
	}
	var order []string
	for k := range values {
		order = append(order, k)
	}
	for _, e := range c.spec.Env {
		v := ""
		switch {
		case e.ValueFrom == nil:
			v = strings.NewReplacer("$(", "${", ")", "}").Replace(e.Value)
			v = expand(v)
		case e.ValueFrom.SecretKeyRef != nil:
			ref := e.ValueFrom.SecretKeyRef
			val, ok, err := keyRef("Secret", pod.Namespace, ref.Name, ref.Key, ref.Optional, func() (map[string]string, error) {
				sec, err := client.Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
				if err != nil {
					return nil, err
				}
				data := map[string]string{}
				for k, b := range sec.Data {
					data[k] = string(b)
				}
				return data, nil
			})
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			v = val
		case e.ValueFrom.ConfigMapKeyRef != nil:
			ref := e.ValueFrom.ConfigMapKeyRef
			val, ok, err := keyRef("ConfigMap", pod.Namespace, ref.Name, ref.Key, ref.Optional, func() (map[string]string, error) {
				cm, err := client.ConfigMaps(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
				if err != nil {
					return nil, err
				}
				return cm.Data, nil
			})
			if err != nil {
				return nil, err
			}
			if !ok {
				continue
			}
			v = val
		case e.ValueFrom.FieldRef != nil:
			v = c.pod.field(e.ValueFrom.FieldRef.FieldPath)
		}
		if _, seen := values[e.Name]; !seen {
			order = append(order, e.Name)
		}
		values[e.Name] = v
	}
	for _, k := range order {
		env = append(env, k+"="+values[k])
	}
	c.mu.Lock()
	c.env = env
	c.mu.Unlock()
	return env, nil
}

// keyRef reads one key of a Secret or ConfigMap as the kubelet does: a missing object or key is
// an error unless the reference is optional, when the variable is left out (ok false).
func keyRef(kind, ns, name, key string, optional *bool, read func() (map[string]string, error)) (string, bool, error) {
	skip := optional != nil && *optional
	data, err := read()
	if err != nil {
		if skip {
			return "", false, nil
		}
		return "", false, fmt.Errorf("%s %q not found", strings.ToLower(kind), name)
	}
	val, found := data[key]
	if !found {
		if skip {
			return "", false, nil
		}
		return "", false, fmt.Errorf("couldn't find key %s in %s %s/%s", key, kind, ns, name)
	}
	return val, true, nil
}

// lineWriter stores container output as the CRI log format: "TIME STREAM F LINE".
type lineWriter struct {
	mu     sync.Mutex
	w      io.Writer
	stream string
	buf    []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, b...)
	for {
		i := strings.IndexByte(string(l.buf), '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(l.w, "%s %s F %s\n", time.Now().UTC().Format(time.RFC3339Nano), l.stream, l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	return len(b), nil
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		fmt.Fprintf(l.w, "%s %s P %s\n", time.Now().UTC().Format(time.RFC3339Nano), l.stream, l.buf)
		l.buf = nil
	}
}

// readLog returns the lines of a CRI log file (without the CRI prefix unless timestamps).
func readLog(path string, timestamps bool, since time.Time) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var lines []string
	scan := bufio.NewScanner(f)
	scan.Buffer(make([]byte, 64*1024), 1024*1024)
	for scan.Scan() {
		if line, ok := formatLogLine(scan.Text(), timestamps, since); ok {
			lines = append(lines, line)
		}
	}
	return lines, scan.Err()
}

func formatLogLine(raw string, timestamps bool, since time.Time) (string, bool) {
	parts := strings.SplitN(raw, " ", 4)
	if len(parts) < 4 {
		return raw, true
	}
	t, err := time.Parse(time.RFC3339Nano, parts[0])
	if err == nil && !since.IsZero() && t.Before(since) {
		return "", false
	}
	if timestamps {
		return parts[0] + " " + parts[3], true
	}
	return parts[3], true
}
