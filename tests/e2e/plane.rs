//! The test plane's node does what a kubelet does: init containers, terminal phases (so Jobs
//! complete), HTTP probes, service-account token volumes, the pod's /etc files, and SIGTERM
//! before SIGKILL. Driven with plain kubectl against the real apiserver.

use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::scope::Scope;
use crate::OutputExt;

#[track_caller]
fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}", out.describe());
    out.stdout_text()
}

fn apply(scope: &Scope, manifest: &str) {
    ok(scope
        .plane
        .kubectl_stdin(&["apply", "-n", &scope.ns, "-f", "-"], manifest));
}

fn wait(scope: &Scope, what: &str, condition: &str) {
    ok(scope.kubectl_ns(&["wait", condition, what, "--timeout=90s"]));
}

fn get(scope: &Scope, what: &str, jsonpath: &str) -> String {
    ok(scope.kubectl_ns(&["get", what, "-o", &format!("jsonpath={jsonpath}")]))
}

fn exec(scope: &Scope, pod: &str, command: &[&str]) -> String {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(command);
    ok(scope.kubectl_ns(&args))
}

/// Init containers run one after the other, each to completion, before the main container,
/// which reads what they wrote; their logs are served. A failing one is retried under `Always`
/// and fails the pod under `Never`.
#[test]
fn init_containers_run_in_order_before_the_main_ones() {
    let scope = Scope::new("kpg-plane-init");
    apply(
        &scope,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: ordered}\nspec:\n  volumes: [{name: v, emptyDir: {}}]\n  \
         initContainers:\n  - {name: first, image: busybox, volumeMounts: [{name: v, mountPath: /mnt}], \
         command: [sh, -c, 'echo first-ran; echo one > /mnt/order']}\n  \
         - {name: second, image: busybox, volumeMounts: [{name: v, mountPath: /mnt}], \
         command: [sh, -c, 'echo two >> /mnt/order']}\n  containers:\n  \
         - {name: main, image: busybox, volumeMounts: [{name: v, mountPath: /mnt}], \
         command: [sh, -c, 'cat /mnt/order; exec sleep 3600']}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: broken}\nspec:\n  restartPolicy: Never\n  \
         initContainers:\n  - {name: fails, image: busybox, command: [sh, -c, 'echo nope; exit 3']}\n  \
         containers:\n  - {name: never, image: busybox, command: [sleep, '3600']}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: retried}\nspec:\n  volumes: [{name: v, emptyDir: {}}]\n  \
         initContainers:\n  - {name: flaky, image: busybox, volumeMounts: [{name: v, mountPath: /mnt}], \
         command: [sh, -c, 'test -e /mnt/tried && exit 0; touch /mnt/tried; exit 1']}\n  \
         containers:\n  - {name: main, image: busybox, command: [sleep, '3600']}\n",
    );
    wait(&scope, "pod/ordered", "--for=condition=Ready");
    assert_eq!(
        get(
            &scope,
            "pod/ordered",
            "{.status.conditions[?(@.type==\"Initialized\")].status}"
        ),
        "True"
    );
    assert_eq!(
        get(
            &scope,
            "pod/ordered",
            "{.status.initContainerStatuses[*].state.terminated.reason}"
        ),
        "Completed Completed"
    );
    assert_eq!(
        ok(scope.kubectl_ns(&["logs", "ordered", "-c", "first"])),
        "first-ran\n"
    );
    assert_eq!(
        ok(scope.kubectl_ns(&["logs", "ordered", "-c", "main"])),
        "one\ntwo\n"
    );

    wait(
        &scope,
        "pod/broken",
        "--for=jsonpath={.status.phase}=Failed",
    );
    assert_eq!(
        get(
            &scope,
            "pod/broken",
            "{.status.initContainerStatuses[0].state.terminated.exitCode}"
        ),
        "3"
    );
    assert_eq!(
        get(
            &scope,
            "pod/broken",
            "{.status.conditions[?(@.type==\"Initialized\")].status}"
        ),
        "False"
    );
    assert_eq!(
        get(
            &scope,
            "pod/broken",
            "{.status.containerStatuses[0].state.waiting.reason}"
        ),
        "PodInitializing"
    );
    assert_eq!(
        ok(scope.kubectl_ns(&["logs", "broken", "-c", "fails"])),
        "nope\n"
    );

    // Under restartPolicy Always a failed init container runs again, then the pod starts.
    wait(&scope, "pod/retried", "--for=condition=Ready");
    assert_eq!(
        get(
            &scope,
            "pod/retried",
            "{.status.initContainerStatuses[0].restartCount}"
        ),
        "1"
    );
}

/// A Job whose container exits 0 completes; one whose container fails, with backoffLimit 0,
/// fails, its pod Failed with the exit code.
#[test]
fn jobs_complete_or_fail_on_their_exit_codes() {
    let scope = Scope::new("kpg-plane-job");
    let job = |name: &str, code: u8, policy: &str| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  backoffLimit: 0\n  template:\n    \
             spec:\n      restartPolicy: {policy}\n      containers:\n      - {{name: c, image: busybox, \
             command: [sh, -c, 'echo done; exit {code}']}}\n"
        )
    };
    apply(
        &scope,
        &format!(
            "{}---\n{}",
            job("passes", 0, "Never"),
            job("fails", 2, "Never")
        ),
    );
    apply(&scope, &job("on-failure", 0, "OnFailure"));
    wait(&scope, "job/passes", "--for=condition=Complete");
    wait(&scope, "job/on-failure", "--for=condition=Complete");
    wait(&scope, "job/fails", "--for=condition=Failed");
    let pod = |job: &str, path: &str| {
        get(
            &scope,
            "pods",
            &format!("{{.items[?(@.metadata.labels.job-name==\"{job}\")]{path}}}"),
        )
    };
    assert_eq!(pod("passes", ".status.phase"), "Succeeded");
    assert_eq!(
        pod(
            "passes",
            ".status.containerStatuses[0].state.terminated.exitCode"
        ),
        "0"
    );
    assert_eq!(pod("fails", ".status.phase"), "Failed");
    assert_eq!(
        pod(
            "fails",
            ".status.containerStatuses[0].state.terminated.exitCode"
        ),
        "2"
    );
    assert_eq!(
        get(
            &scope,
            "job/fails",
            "{.status.conditions[?(@.type==\"Failed\")].reason}"
        ),
        "BackoffLimitExceeded"
    );
}

/// HTTPS with a certificate the prober cannot verify (the apiserver's, issued by the plane's CA).
const HTTPS_SERVER: &str = "import functools, http.server, ssl; \
    s = http.server.HTTPServer(('', 8443), functools.partial(http.server.SimpleHTTPRequestHandler, directory='/mnt')); \
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); c.load_cert_chain('/mnt/tls.crt', '/mnt/tls.key'); \
    s.socket = c.wrap_socket(s.socket, server_side=True); s.serve_forever()";

/// An HTTP readiness probe on a named port, from inside the pod's network namespace, fails
/// (404) until the file it asks for exists, then passes; an HTTPS one passes without verifying
/// the server's certificate.
#[test]
fn http_readiness_probe_passes_once_the_page_exists() {
    let scope = Scope::new("kpg-plane-http");
    let (crt, key) = (
        scope.plane.pki("apiserver.crt"),
        scope.plane.pki("apiserver.key"),
    );
    ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "tls",
        "web-tls",
        &format!("--cert={}", crt.display()),
        &format!("--key={}", key.display()),
    ]));
    apply(
        &scope,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web}}\nspec:\n  \
             volumes: [{{name: v, emptyDir: {{}}}}, {{name: tls, secret: {{secretName: web-tls}}}}]\n  \
             containers:\n  - name: tls\n    image: busybox\n    \
             command: [python3, -c, \"{HTTPS_SERVER}\"]\n    volumeMounts: [{{name: tls, mountPath: /mnt}}]\n    \
             readinessProbe: {{httpGet: {{scheme: HTTPS, path: /tls.crt, port: 8443}}, periodSeconds: 1}}\n  \
             - name: web\n    image: busybox\n    command: [python3, -m, http.server, '8080', --directory, /mnt]\n    \
             ports: [{{name: http, containerPort: 8080}}]\n    volumeMounts: [{{name: v, mountPath: /mnt}}]\n    \
             readinessProbe:\n      \
             httpGet: {{path: /ready, port: http, httpHeaders: [{{name: X-Probe, value: kpg}}]}}\n      \
             periodSeconds: 1\n      timeoutSeconds: 2\n",
        ),
    );
    wait(&scope, "pod/web", "--for=jsonpath={.status.phase}=Running");
    // The probe has answered 404 at least once: its Unhealthy event names the status.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let events = ok(scope.kubectl_ns(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=web,reason=Unhealthy",
            "-o",
            "jsonpath={.items[*].message}",
        ]));
        if events.contains("HTTP probe failed with statuscode: 404") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed HTTP probe: {events:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        get(
            &scope,
            "pod/web",
            "{.status.conditions[?(@.type==\"Ready\")].status}"
        ),
        "False"
    );
    ok(scope.kubectl_ns(&[
        "exec",
        "web",
        "-c",
        "web",
        "--",
        "sh",
        "-c",
        "echo ok > /mnt/ready",
    ]));
    wait(&scope, "pod/web", "--for=condition=Ready");
    let log = ok(scope.kubectl_ns(&["logs", "web", "-c", "web"]));
    assert!(log.contains("\"GET /ready HTTP/1.1\" 200"), "{log}");
}

/// The default kube-api-access volume holds a token of the pod's ServiceAccount, bound to the
/// pod, that the apiserver accepts; `ca.crt` and `namespace` beside it. The pod's hosts,
/// hostname and resolv.conf are its own.
#[test]
fn pods_get_their_token_and_etc_files() {
    let scope = Scope::new("kpg-plane-sa");
    apply(
        &scope,
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: reader}\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  serviceAccountName: reader\n  \
         containers:\n  - {name: c, image: busybox, command: [sleep, '3600']}\n",
    );
    wait(&scope, "pod/client", "--for=condition=Ready");
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let volume = get(&scope, "pod/client", "{.spec.volumes[0].name}");
    assert!(volume.starts_with("kube-api-access-"), "{volume}");
    assert_eq!(
        exec(&scope, "client", &["cat", &format!("{dir}/namespace")]),
        scope.ns
    );
    assert!(exec(&scope, "client", &["cat", &format!("{dir}/ca.crt")])
        .starts_with("-----BEGIN CERTIFICATE-----"));
    let token = exec(&scope, "client", &["sh", "-c", &format!("cat {dir}/token")]);
    let review = format!(
        "{{\"apiVersion\":\"authentication.k8s.io/v1\",\"kind\":\"TokenReview\",\"spec\":{{\"token\":\"{token}\"}}}}"
    );
    let user = ok(scope.plane.kubectl_stdin(
        &["create", "-f", "-", "-o", "jsonpath={.status.user.username} {.status.user.extra.authentication\\.kubernetes\\.io/pod-name[0]}"],
        &review,
    ));
    assert_eq!(
        user,
        format!("system:serviceaccount:{}:reader client", scope.ns)
    );

    // The variables name the `kubernetes` Service, as on a real node.
    let server = format!(
        "{}:443",
        ok(scope.plane.kubectl(&[
            "get",
            "service",
            "kubernetes",
            "-n",
            "default",
            "-o",
            "jsonpath={.spec.clusterIP}"
        ]))
    );
    assert_eq!(
        exec(
            &scope,
            "client",
            &[
                "sh",
                "-c",
                "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"
            ]
        )
        .trim(),
        server
    );
    let resolv = exec(&scope, "client", &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!(
            "search {}.svc.cluster.local svc.cluster.local cluster.local\n",
            scope.ns
        )),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:5"), "{resolv}");
    assert_eq!(
        exec(&scope, "client", &["cat", "/etc/hostname"]),
        "client\n"
    );
    assert_eq!(exec(&scope, "client", &["hostname"]), "client\n");
    let ip = get(&scope, "pod/client", "{.status.podIP}");
    let hosts = exec(&scope, "client", &["cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip}\tclient\n")), "{hosts}");
}

/// Deleting a pod sends SIGTERM to its main process, whose trap runs (it writes a file on a
/// volume) and ends it well before the grace period; a process that ignores SIGTERM is killed
/// once the grace period is over.
#[test]
fn deleted_pods_get_sigterm_then_sigkill() {
    let scope = Scope::new("kpg-plane-term");
    let out = tempfile::tempdir().unwrap();
    std::fs::set_permissions(out.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let pod = |name: &str, trap: &str, grace: u32| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: {grace}\n  \
             volumes: [{{name: out, hostPath: {{path: {dir}}}}}]\n  containers:\n  - name: c\n    image: busybox\n    \
             volumeMounts: [{{name: out, mountPath: /mnt}}]\n    \
             command: [sh, -c, '{trap}; touch /mnt/{name}-started; sleep 3600 & wait']\n    \
             readinessProbe: {{exec: {{command: [test, -e, /mnt/{name}-started]}}, periodSeconds: 1}}\n",
            dir = out.path().display()
        )
    };
    apply(
        &scope,
        &format!(
            "{}---\n{}",
            pod(
                "polite",
                "trap \"echo term > /mnt/polite-got; exit 0\" TERM",
                60
            ),
            pod("stubborn", "trap \"\" TERM", 2)
        ),
    );
    wait(&scope, "pod/polite", "--for=condition=Ready");
    wait(&scope, "pod/stubborn", "--for=condition=Ready");
    let began = Instant::now();
    ok(scope.kubectl_ns(&["delete", "pod", "polite", "--timeout=90s"]));
    assert!(
        began.elapsed() < Duration::from_secs(30),
        "SIGTERM ended it: {:?}",
        began.elapsed()
    );
    assert_eq!(
        std::fs::read_to_string(out.path().join("polite-got")).unwrap(),
        "term\n"
    );
    let began = Instant::now();
    ok(scope.kubectl_ns(&["delete", "pod", "stubborn", "--timeout=90s"]));
    assert!(
        began.elapsed() >= Duration::from_secs(2),
        "killed only after the grace period"
    );
}

/// A pod reaches another pod by its IP, a Service by its DNS name (kube-proxy's ClusterIP,
/// CoreDNS's answer through the search path), itself through its own Service (hairpin), and the
/// apiserver through `kubernetes.default.svc` with its token; `kubectl port-forward svc/…`
/// works. From the host, pod addresses route only into the node's namespace and Service
/// addresses are unreachable: nothing goes out by the default route.
#[test]
fn pods_reach_pods_services_dns_and_the_apiserver() {
    let scope = Scope::new("kpg-plane-net");
    apply(
        &scope,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {app: web}}\nspec:\n  \
         containers:\n  - name: web\n    image: busybox\n    \
         command: [sh, -c, 'mkdir -p /tmp/www-$HOSTNAME && cd /tmp/www-$HOSTNAME && echo served-by-$HOSTNAME > index.html && exec python3 -m http.server 8080']\n    \
         ports: [{name: http, containerPort: 8080}]\n    \
         readinessProbe: {httpGet: {path: /index.html, port: http}, periodSeconds: 1}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: site}\nspec:\n  selector: {app: web}\n  \
         ports: [{port: 80, targetPort: http}]\n---\n\
         apiVersion: v1\nkind: Pod\nmetadata: {name: client}\nspec:\n  \
         containers:\n  - {name: c, image: busybox, command: [sleep, '3600']}\n",
    );
    wait(&scope, "pod/web", "--for=condition=Ready");
    wait(&scope, "pod/client", "--for=condition=Ready");
    let web_ip = get(&scope, "pod/web", "{.status.podIP}");
    let cluster_ip = get(&scope, "service/site", "{.spec.clusterIP}");
    let fetch = |pod: &str, url: &str| {
        exec(
            &scope,
            pod,
            &[
                "python3",
                "-c",
                "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode().strip())",
                url,
            ],
        )
    };
    assert_eq!(
        fetch("client", &format!("http://{web_ip}:8080/")),
        "served-by-web\n"
    );
    // The short name goes through resolv.conf's search path (ndots:5) to CoreDNS.
    // CoreDNS and kube-proxy follow the Service and its EndpointSlice by their watches: the
    // first answer may come a moment after the pod is Ready.
    let until_ok = |script: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = scope.kubectl_ns(&["exec", "client", "--", "python3", "-c", script]);
            if out.status.success() || Instant::now() > deadline {
                break ok(out);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let resolved = until_ok("import socket; print(socket.gethostbyname('site'))");
    assert_eq!(resolved.trim(), cluster_ip);
    let via_service = until_ok(
        "import urllib.request; print(urllib.request.urlopen('http://site/', timeout=5).read().decode().strip())",
    );
    assert_eq!(via_service, "served-by-web\n");
    assert_eq!(
        fetch(
            "web",
            &format!("http://site.{}.svc.cluster.local/", scope.ns)
        ),
        "served-by-web\n",
        "hairpin: a pod through its own Service"
    );
    let version = exec(
        &scope,
        "client",
        &[
            "python3",
            "-c",
            "import json, ssl, urllib.request\n\
             d = '/var/run/secrets/kubernetes.io/serviceaccount/'\n\
             ctx = ssl.create_default_context(cafile=d + 'ca.crt')\n\
             req = urllib.request.Request('https://kubernetes.default.svc/version', headers={'Authorization': 'Bearer ' + open(d + 'token').read()})\n\
             print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))['gitVersion'])",
        ],
    );
    assert_eq!(version.trim(), format!("v{}", scope.plane.version));

    // kubectl port-forward to the Service reaches the pod behind it.
    let (mut child, port) = scope.plane.port_forward(&scope.ns, "svc/site", 80);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    std::io::Write::write_all(&mut stream, b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.ends_with("served-by-web\n"), "{answer}");

    // From the host: the pod's address routes into the node's namespace, never by the default
    // route's device; a Service address is unreachable.
    let route = |ip: &str| {
        std::process::Command::new("ip")
            .args(["route", "get", ip])
            .output()
            .unwrap()
    };
    let default = std::process::Command::new("ip")
        .args(["route", "show", "default"])
        .output()
        .unwrap();
    let default_dev = String::from_utf8_lossy(&default.stdout)
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .map(str::to_string);
    let pod_route = String::from_utf8_lossy(&route(&web_ip).stdout).to_string();
    assert!(pod_route.contains("-host "), "{pod_route}");
    if let Some(dev) = default_dev {
        assert!(!pod_route.contains(&format!("dev {dev} ")), "{pod_route}");
    }
    let service_route = route(&cluster_ip);
    assert!(
        !service_route.status.success()
            && String::from_utf8_lossy(&service_route.stderr).contains("No route to host"),
        "{}",
        service_route.describe()
    );
}
