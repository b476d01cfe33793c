package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
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
		cmd := c.command(ctx, c.execEnv(env), p.Exec.Command...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		if ctx.Err() == context.DeadlineExceeded {
			return false, fmt.Sprintf("command %q timed out", strings.Join(p.Exec.Command, " "))
		}
		return err == nil, strings.TrimSpace(out.String())
	case p.HTTPGet != nil:
		return c.httpCheck(ctx, p.HTTPGet, timeout)
	case p.TCPSocket != nil:
		port := c.port(p.TCPSocket.Port)
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

// port resolves a probe's port, a number or the name of one of the container's ports.
func (c *container) port(p intstr.IntOrString) int {
	if p.Type == intstr.String {
		for _, cp := range c.spec.Ports {
			if cp.Name == p.StrVal {
				return int(cp.ContainerPort)
			}
		}
		return -1
	}
	return p.IntValue()
}

// httpCheck is the kubelet's HTTP prober: a GET from inside the pod's network namespace to the
// pod's address (or the probe's host), its headers, no certificate check for HTTPS, redirects
// followed; 200-399 passes.
func (c *container) httpCheck(ctx context.Context, h *corev1.HTTPGetAction, timeout time.Duration) (bool, string) {
	host := h.Host
	if host == "" {
		host = c.pod.ip
	}
	if host == "" {
		host = "127.0.0.1"
	}
	scheme := "http"
	if h.Scheme == corev1.URISchemeHTTPS {
		scheme = "https"
	}
	port := c.port(h.Port)
	if port <= 0 {
		return false, fmt.Sprintf("port %s not found in container %s", h.Port.String(), c.spec.Name)
	}
	path := h.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(host, strconv.Itoa(port)), path)
	transport := &http.Transport{
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			return dialPod(c.pod, addr, timeout)
		},
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
	}
	defer transport.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false, err.Error()
	}
	req.Header.Set("User-Agent", "kube-probe/1.37")
	req.Header.Set("Accept", "*/*")
	for _, hd := range h.HTTPHeaders {
		if strings.EqualFold(hd.Name, "Host") {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	resp, err := (&http.Client{Transport: transport, Timeout: timeout}).Do(req)
	if err != nil {
		return false, fmt.Sprintf("Get %q: %v", url, err)
	}
	defer resp.Body.Close()
	_, _ = io.CopyN(io.Discard, resp.Body, 10*1024)
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return false, fmt.Sprintf("HTTP probe failed with statuscode: %d", resp.StatusCode)
	}
	return true, ""
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
