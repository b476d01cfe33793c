package main

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// probe runs the container's startup, readiness and liveness probes as the kubelet's prober
// workers do: startup first, readiness and liveness once started; a failed liveness probe
// (or startup probe past its threshold) restarts the container.
func (c *container) probe(ctx context.Context, env []string) {
	if p := c.spec.StartupProbe; p != nil {
		if !c.until(ctx, env, p, true, "Startup") {
			return
		}
		c.set(func() { c.startedProbe = true })
	}
	if c.crashFault() {
		return
	}
	if c.spec.LivenessProbe != nil {
		go c.until(ctx, env, c.spec.LivenessProbe, false, "Liveness")
	}
	p := c.spec.ReadinessProbe
	if p == nil {
		c.set(func() { c.ready = true })
		return
	}
	period := seconds(p.PeriodSeconds, 10)
	successes, failures := 0, 0
	tick := time.NewTimer(seconds(p.InitialDelaySeconds, 0))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		ok, out := c.check(ctx, env, p)
		if ok {
			successes, failures = successes+1, 0
			if successes >= int(max(p.SuccessThreshold, 1)) {
				c.set(func() { c.ready = true })
			}
		} else {
			successes, failures = 0, failures+1
			c.event(corev1.EventTypeWarning, "Unhealthy", "Readiness probe failed: %s", out)
			if failures >= int(max(p.FailureThreshold, 1)) {
				c.set(func() { c.ready = false })
			}
		}
		tick.Reset(period)
	}
}

// until runs a startup (returns on first success) or liveness probe (runs for the life of
// the container); past the failure threshold it kills the container.
func (c *container) until(ctx context.Context, env []string, p *corev1.Probe, startup bool, kind string) bool {
	failures := 0
	tick := time.NewTimer(seconds(p.InitialDelaySeconds, 0))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
		ok, out := c.check(ctx, env, p)
		if ok {
			failures = 0
			if startup {
				return true
			}
		} else {
			failures++
			c.event(corev1.EventTypeWarning, "Unhealthy", "%s probe failed: %s", kind, out)
			if failures >= int(max(p.FailureThreshold, 1)) {
				c.event(corev1.EventTypeNormal, "Killing", "Container %s failed %s probe, will be restarted", c.spec.Name, strings.ToLower(kind))
				c.kill()
				return false
			}
		}
		tick.Reset(seconds(p.PeriodSeconds, 10))
	}
}

func (c *container) kill() {
	c.mu.Lock()
	proc := c.proc
	c.mu.Unlock()
	if proc != nil && proc.Process != nil {
		_ = killGroup(proc.Process.Pid)
	}
}

func (c *container) check(ctx context.Context, env []string, p *corev1.Probe) (bool, string) {
	timeout := seconds(p.TimeoutSeconds, 1)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	switch {
	case p.Exec != nil:
		cmd := c.pod.command(ctx, c.execEnv(env), p.Exec.Command...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ctx.Err() == context.DeadlineExceeded {
			return false, fmt.Sprintf("command %q timed out", strings.Join(p.Exec.Command, " "))
		}
		return err == nil, strings.TrimSpace(out.String())
	case p.TCPSocket != nil:
		port := p.TCPSocket.Port.IntValue()
		conn, err := dialPod(c.pod, fmt.Sprintf("127.0.0.1:%d", port), timeout)
		if err != nil {
			return false, fmt.Sprintf("dial tcp %s:%d: connect: connection refused", c.pod.ip, port)
		}
		conn.Close()
		return true, ""
	default:
		return true, ""
	}
}

func seconds(v int32, def int32) time.Duration {
	if v <= 0 {
		v = def
	}
	return time.Duration(v) * time.Second
}

// crashFault is a test's injected failure: a pod annotated kpg-cluster/crash-major=N kills its
// PostgreSQL server of major N (SIGKILL, as the OOM killer would) once it has started, on every
// start, so it crash-loops. Other majors in the same pod template are not touched.
func (c *container) crashFault() bool {
	major := c.pod.current().Annotations["kpg-cluster/crash-major"]
	c.mu.Lock()
	proc, kind, own := c.proc, c.image.kind, c.image.major
	c.mu.Unlock()
	if kind != imagePostgres || major == "" || major != strconv.Itoa(own) || proc == nil || proc.Process == nil {
		return false
	}
	c.event(corev1.EventTypeWarning, "Killing", "Injected fault: killing PostgreSQL %d", own)
	_ = syscall.Kill(-proc.Process.Pid, syscall.SIGKILL)
	return true
}
