package main

import (
	"context"
	"fmt"
	"os"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// provisioner is the name our StorageClasses carry; the PV controller leaves their claims to
// the external provisioner below, as it does for a cloud CSI driver.
const provisioner = "kpg.test/hostpath"

// ensureStorageClasses creates the classes a cloud cluster has: the default one binds on the
// first consumer and can grow, "immediate" binds at once and cannot.
func ensureStorageClasses(ctx context.Context, client kubernetes.Interface) error {
	wffc, immediate := storagev1.VolumeBindingWaitForFirstConsumer, storagev1.VolumeBindingImmediate
	reclaim := corev1.PersistentVolumeReclaimDelete
	for _, sc := range []*storagev1.StorageClass{
		{
			ObjectMeta:           metav1.ObjectMeta{Name: "standard", Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}},
			Provisioner:          provisioner,
			VolumeBindingMode:    &wffc,
			AllowVolumeExpansion: ptr.To(true),
			ReclaimPolicy:        &reclaim,
		},
		{
			ObjectMeta:        metav1.ObjectMeta{Name: "immediate"},
			Provisioner:       provisioner,
			VolumeBindingMode: &immediate,
			ReclaimPolicy:     &reclaim,
		},
	} {
		if _, err := client.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
	return nil
}

// startStorage runs the provisioner, the deleter and the resizer on the shared informers.
func startStorage(ctx context.Context, n *node) {
	claims := n.factory.Core().V1().PersistentVolumeClaims()
	volumes := n.factory.Core().V1().PersistentVolumes()
	classes := n.factory.Storage().V1().StorageClasses()
	classes.Informer()
	_, _ = claims.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { go n.reconcileClaim(ctx, obj.(*corev1.PersistentVolumeClaim)) },
		UpdateFunc: func(_, obj any) { go n.reconcileClaim(ctx, obj.(*corev1.PersistentVolumeClaim)) },
	})
	_, _ = volumes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { go n.reconcileVolume(ctx, obj.(*corev1.PersistentVolume)) },
		UpdateFunc: func(_, obj any) { go n.reconcileVolume(ctx, obj.(*corev1.PersistentVolume)) },
	})
}

func (n *node) class(name string) *storagev1.StorageClass {
	sc, err := n.factory.Storage().V1().StorageClasses().Lister().Get(name)
	if err != nil {
		return nil
	}
	return sc
}

func (n *node) reconcileClaim(ctx context.Context, pvc *corev1.PersistentVolumeClaim) {
	if pvc.DeletionTimestamp != nil {
		return
	}
	if pvc.Spec.VolumeName == "" {
		n.provision(ctx, pvc)
		return
	}
	n.resize(ctx, pvc)
}

// provision creates a hostPath PV for a claim the PV controller handed to us: at once for an
// Immediate class, after the scheduler picked the node for WaitForFirstConsumer.
func (n *node) provision(ctx context.Context, pvc *corev1.PersistentVolumeClaim) {
	if pvc.Annotations["volume.kubernetes.io/storage-provisioner"] != provisioner || pvc.Spec.StorageClassName == nil {
		return
	}
	sc := n.class(*pvc.Spec.StorageClassName)
	if sc == nil {
		return
	}
	if sc.VolumeBindingMode != nil && *sc.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer && pvc.Annotations["volume.kubernetes.io/selected-node"] == "" {
		return
	}
	name := "pvc-" + string(pvc.UID)
	dir := hostDir("volumes", name)
	if err := ensureDir(dir, n.uid, n.gid, 0o755); err != nil {
		return
	}
	size := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	reclaim := corev1.PersistentVolumeReclaimDelete
	if sc.ReclaimPolicy != nil {
		reclaim = *sc.ReclaimPolicy
	}
	hostPathType := corev1.HostPathDirectory
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{"pv.kubernetes.io/provisioned-by": provisioner}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   pvc.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              sc.Name,
			VolumeMode:                    pvc.Spec.VolumeMode,
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: pvc.Namespace, Name: pvc.Name, UID: pvc.UID},
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: dir, Type: &hostPathType}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{nodeName}}},
			}}}},
		},
	}
	_, err := n.client.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
	if err == nil {
		n.recorder.Eventf(pvc, corev1.EventTypeNormal, "ProvisioningSucceeded", "Successfully provisioned volume %s", name)
	}
}

// reconcileVolume removes a released volume of ours whose reclaim policy is Delete.
func (n *node) reconcileVolume(ctx context.Context, pv *corev1.PersistentVolume) {
	if pv.Annotations["pv.kubernetes.io/provisioned-by"] != provisioner || pv.Status.Phase != corev1.VolumeReleased ||
		pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.DeletionTimestamp != nil {
		return
	}
	if pv.Spec.HostPath != nil {
		_ = os.RemoveAll(pv.Spec.HostPath.Path)
	}
	_ = n.client.CoreV1().PersistentVolumes().Delete(ctx, pv.Name, metav1.DeleteOptions{})
}

// resize grows a bound volume whose claim asks for more, as an external resizer does when the
// class allows expansion: the PV's capacity, then the claim's status and conditions.
func (n *node) resize(ctx context.Context, pvc *corev1.PersistentVolumeClaim) {
	want := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	have, ok := pvc.Status.Capacity[corev1.ResourceStorage]
	if !ok || want.Cmp(have) <= 0 || pvc.Spec.StorageClassName == nil {
		return
	}
	sc := n.class(*pvc.Spec.StorageClassName)
	if sc == nil || sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
		return
	}
	claims := n.client.CoreV1().PersistentVolumeClaims(pvc.Namespace)
	// Other controllers write the claim's status too (the Unused condition): re-read on conflict.
	updateStatus := func(change func(*corev1.PersistentVolumeClaim)) (*corev1.PersistentVolumeClaim, error) {
		var out *corev1.PersistentVolumeClaim
		err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			live, err := claims.Get(ctx, pvc.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			change(live)
			out, err = claims.UpdateStatus(ctx, live, metav1.UpdateOptions{})
			return err
		})
		return out, err
	}
	withoutResizing := func(conditions []corev1.PersistentVolumeClaimCondition) []corev1.PersistentVolumeClaimCondition {
		var kept []corev1.PersistentVolumeClaimCondition
		for _, c := range conditions {
			if c.Type != corev1.PersistentVolumeClaimResizing && c.Type != corev1.PersistentVolumeClaimFileSystemResizePending {
				kept = append(kept, c)
			}
		}
		return kept
	}
	live, err := updateStatus(func(c *corev1.PersistentVolumeClaim) {
		c.Status.Conditions = append(withoutResizing(c.Status.Conditions), corev1.PersistentVolumeClaimCondition{
			Type: corev1.PersistentVolumeClaimResizing, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now(),
		})
	})
	if err != nil {
		return
	}
	n.recorder.Eventf(live, corev1.EventTypeNormal, "Resizing", "External resizer is resizing volume %s", live.Spec.VolumeName)
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		pv, err := n.client.CoreV1().PersistentVolumes().Get(ctx, live.Spec.VolumeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		pv.Spec.Capacity[corev1.ResourceStorage] = want
		_, err = n.client.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return
	}
	live, err = updateStatus(func(c *corev1.PersistentVolumeClaim) {
		c.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: want}
		c.Status.AllocatedResources = corev1.ResourceList{corev1.ResourceStorage: want}
		c.Status.Conditions = withoutResizing(c.Status.Conditions)
	})
	if err == nil {
		n.recorder.Eventf(live, corev1.EventTypeNormal, "VolumeResizeSuccessful", "resize volume %q by resizer %q finished successfully", live.Spec.VolumeName, provisioner)
	}
}

// claimDir is the host directory behind a pod's claim.
func claimDir(n *node, ns, claim string) (string, error) {
	ctx := context.Background()
	pvc, err := n.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if pvc.Spec.VolumeName == "" {
		return "", fmt.Errorf("claim %s/%s is not bound", ns, claim)
	}
	pv, err := n.client.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	if pv.Spec.HostPath == nil {
		return "", fmt.Errorf("volume %s has no host path", pv.Name)
	}
	return pv.Spec.HostPath.Path, nil
}
