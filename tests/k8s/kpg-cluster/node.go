package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
)

const nodeName = "kpg-node"

var stopping atomic.Bool

type nodeConfig struct {
	kubeconfig, dir, pgRoot   string
	certFile, keyFile, caFile string
	cpu, memory               string
}

// node is the kubelet of the one node: it registers the Node, keeps its Lease, runs the pods
// the scheduler binds to it and serves exec, port-forward and logs to the apiserver.
type node struct {
	cfg      nodeConfig
	client   kubernetes.Interface
	recorder record.EventRecorder
	factory  informers.SharedInformerFactory
	port     int
	uid, gid int

	mu   sync.Mutex
	pods map[types.UID]*podRuntime
}

var theNode *node

func stopNode() {
	if theNode == nil {
		return
	}
	theNode.mu.Lock()
	pods := make([]*podRuntime, 0, len(theNode.pods))
	for _, p := range theNode.pods {
		pods = append(pods, p)
	}
	theNode.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() { defer wg.Done(); p.kill(5 * time.Second) }()
	}
	wg.Wait()
}

func startNode(ctx context.Context, cfg nodeConfig) error {
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = 100, 200
	rc.UserAgent = "kubelet/kpg-node"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	n := &node{cfg: cfg, client: client, pods: map[types.UID]*podRuntime{}}
	n.uid, n.gid = postgresAccount()
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	n.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: nodeName})
	theNode = n

	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	n.port = listener.Addr().(*net.TCPAddr).Port
	if err := n.serve(listener); err != nil {
		return err
	}
	if err := n.register(ctx); err != nil {
		return fmt.Errorf("register node: %w", err)
	}
	go n.heartbeat(ctx)
	if err := ensureStorageClasses(ctx, client); err != nil {
		return fmt.Errorf("storage classes: %w", err)
	}

	n.factory = informers.NewSharedInformerFactory(client, 0)
	startStorage(ctx, n)
	pods := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", nodeName).String()
	}))
	_, err = pods.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.sync(obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { n.sync(obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if pod, ok := obj.(*corev1.Pod); ok {
				n.forget(pod.UID)
			}
		},
	})
	if err != nil {
		return err
	}
	n.factory.Start(ctx.Done())
	pods.Start(ctx.Done())
	n.factory.WaitForCacheSync(ctx.Done())
	pods.WaitForCacheSync(ctx.Done())
	return nil
}

// postgresAccount is the unprivileged OS account pods run as: PostgreSQL refuses root.
func postgresAccount() (int, int) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return 999, 999
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

func (n *node) register(ctx context.Context) error {
	obj := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: nodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": nodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     "amd64",
				"beta.kubernetes.io/os":  "linux",
			},
		},
	}
	obj.Spec.PodCIDR = theNet.podCIDR()
	obj.Spec.PodCIDRs = []string{theNet.podCIDR()}
	if _, err := n.client.CoreV1().Nodes().Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	return n.updateNodeStatus(ctx)
}

func (n *node) updateNodeStatus(ctx context.Context) error {
	current, err := n.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	condition := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, old := range current.Status.Conditions {
			if old.Type == t && old.Status == s {
				c.LastTransitionTime = old.LastTransitionTime
			}
		}
		return c
	}
	list := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse(n.cfg.cpu),
		corev1.ResourceMemory:           resource.MustParse(n.cfg.memory),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	version := "v0.0.0"
	if info, err := n.client.Discovery().ServerVersion(); err == nil {
		version = info.GitVersion
	}
	current.Status = corev1.NodeStatus{
		Capacity:    list,
		Allocatable: list,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			condition(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			condition(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			condition(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			condition(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: "127.0.0.1"},
			{Type: corev1.NodeHostName, Address: nodeName},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(n.port)}},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion:          version,
			ContainerRuntimeVersion: "kpg-node://1",
			OperatingSystem:         "linux",
			Architecture:            "amd64",
			OSImage:                 "kubectl-pg test node",
			KernelVersion:           kernelVersion(),
		},
	}
	_, err = n.client.CoreV1().Nodes().UpdateStatus(ctx, current, metav1.UpdateOptions{})
	return err
}

func kernelVersion() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return string(b[:len(b)-1])
}

// heartbeat renews the node's Lease every 10 s and its status every 40 s, as the kubelet does:
// without them the node lifecycle controller taints the node and evicts its pods.
func (n *node) heartbeat(ctx context.Context) {
	leases := n.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		now := metav1.NewMicroTime(time.Now())
		lease, err := leases.Get(ctx, nodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			_, _ = leases.Create(ctx, &coordinationv1.Lease{
				ObjectMeta: metav1.ObjectMeta{Name: nodeName},
				Spec: coordinationv1.LeaseSpec{
					HolderIdentity:       ptr.To(nodeName),
					LeaseDurationSeconds: ptr.To[int32](40),
					RenewTime:            &now,
				},
			}, metav1.CreateOptions{})
		} else if err == nil {
			lease.Spec.RenewTime = &now
			_, _ = leases.Update(ctx, lease, metav1.UpdateOptions{})
		}
		if i%4 == 3 {
			_ = n.updateNodeStatus(ctx)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (n *node) sync(pod *corev1.Pod) {
	if pod.Spec.NodeName != nodeName {
		return
	}
	n.mu.Lock()
	rt, ok := n.pods[pod.UID]
	if !ok {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			n.mu.Unlock()
			return
		}
		rt = newPodRuntime(n, pod, theNet.allocate())
		n.pods[pod.UID] = rt
		n.mu.Unlock()
		go rt.run()
		return
	}
	n.mu.Unlock()
	rt.update(pod)
}

func (n *node) forget(uid types.UID) {
	n.mu.Lock()
	rt := n.pods[uid]
	delete(n.pods, uid)
	n.mu.Unlock()
	if rt != nil {
		go rt.kill(0)
	}
}

func (n *node) byName(ns, name string) *podRuntime {
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, p := range n.pods {
		if p.ns == ns && p.name == name && !p.gone.Load() {
			return p
		}
	}
	return nil
}

// waitSettled waits until the control plane can run a pod: the node is Ready without taints
// and the default namespace has its ServiceAccount.
func waitSettled(ctx context.Context) error {
	deadline := time.Now().Add(*startupWait)
	for time.Now().Before(deadline) {
		nd, err := theNode.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		_, saErr := theNode.client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err == nil && saErr == nil && len(nd.Spec.Taints) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("the node did not become schedulable within %s", *startupWait)
}

func hostDir(parts ...string) string {
	return filepath.Join(append([]string{theNode.cfg.dir}, parts...)...)
}
