package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"time"
)

// CloudNativePG's operator, on request: its CRDs applied server-side and Established, then
// the manager as a plain process in the node's network namespace (it calls each instance at
// https://<pod IP>:8000), its webhook serving a certificate of ours (WEBHOOK_CERT_DIR skips its
// own bootstrap; it reads apiserver.crt and apiserver.key there, OLM's names), from a directory holding operator/manager_amd64, the binary it hands to
// instances. Runs that never ask pay nothing.

// planeReady is closed once the control plane answers and the node is schedulable.
var planeReady = make(chan struct{})

var cnpgOnce struct {
	sync.Mutex
	started bool
	err     error
}

// answerCNPG starts the operator once and prints "cnpg: ready" (or "cnpg: error: …") on stdout.
func answerCNPG(ctx context.Context, sup *supervisor, dir string) {
	select {
	case <-planeReady:
	case <-ctx.Done():
		return
	}
	cnpgOnce.Lock()
	if !cnpgOnce.started {
		cnpgOnce.started = true
		cnpgOnce.err = startCNPG(ctx, sup, dir)
	}
	err := cnpgOnce.err
	cnpgOnce.Unlock()
	if err != nil {
		fmt.Printf("cnpg: error: %v\n", err)
		return
	}
	fmt.Println("cnpg: ready")
}

func startCNPG(ctx context.Context, sup *supervisor, dir string) error {
	if *cnpgDir == "" {
		return fmt.Errorf("kpg-cluster was started without -cnpg")
	}
	kubectl := func(args ...string) error {
		cmd := exec.CommandContext(ctx, filepath.Join(*binDir, "kubectl"), append([]string{"--kubeconfig", *kubeconfig}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kubectl %v: %v: %s", args, err, out)
		}
		return nil
	}
	crds := filepath.Join(*cnpgDir, "crd")
	if err := kubectl("apply", "--server-side", "--force-conflicts", "-f", crds); err != nil {
		return err
	}
	// Before the CRDs are served the manager exits: no matches for kind "Pooler".
	if err := kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", crds); err != nil {
		return err
	}
	if err := kubectl("create", "namespace", "cnpg-system"); err != nil {
		if err2 := kubectl("get", "namespace", "cnpg-system"); err2 != nil {
			return err
		}
	}
	work := filepath.Join(dir, "cnpg")
	certs := filepath.Join(work, "certs")
	if err := os.MkdirAll(filepath.Join(work, "operator"), 0o755); err != nil {
		return err
	}
	if err := os.MkdirAll(certs, 0o700); err != nil {
		return err
	}
	manager := filepath.Join(*cnpgDir, "manager")
	link := filepath.Join(work, "operator", "manager_amd64")
	_ = os.Remove(link)
	if err := os.Symlink(manager, link); err != nil {
		return err
	}
	for src, dst := range map[string]string{"cnpg-webhook.crt": "apiserver.crt", "cnpg-webhook.key": "apiserver.key"} {
		b, err := os.ReadFile(filepath.Join(dir, "pki", src))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(certs, dst), b, 0o600); err != nil {
			return err
		}
	}
	cmd := exec.Command("nsenter", "--net=/run/netns/"+theNet.ns, "--", manager, "controller",
		"--leader-elect=false", "--webhook-port=9443", "--metrics-bind-address=127.0.0.1:8080")
	cmd.Dir = work
	cmd.Env = append(os.Environ(),
		"KUBECONFIG="+filepath.Join(dir, "coredns.kubeconfig"),
		"OPERATOR_NAMESPACE=cnpg-system",
		"WEBHOOK_CERT_DIR="+certs)
	if err := sup.startCmd("cnpg-operator", cmd); err != nil {
		return err
	}
	// Ready when its webhook server answers /readyz, which it serves once its caches sync.
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	url := "https://" + net.JoinHostPort(theNet.gateway(), "9443") + "/readyz"
	deadline := time.Now().Add(2 * time.Minute)
	for {
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if cmd.ProcessState != nil || time.Now().After(deadline) {
			return fmt.Errorf("the operator did not answer %s (log: %s)", url, filepath.Join(dir, "logs", "cnpg-operator.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
