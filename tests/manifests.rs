//! The Kubernetes examples in deploy/kubernetes/, read the way a user applies
//! them (`kubectl apply -f deploy/kubernetes/`):
//!
//! - every document parses and is an object current Kubernetes serves, in the
//!   examples' namespace, with no name or nodePort given twice;
//! - every phone-home container (image `lbmesh…`) has the environment
//!   `lbmesh phone-home` reads: FRONTEND_PORT, BACKEND_PORT, NAME,
//!   REPEAT_INTERVAL, WEBHOOK and a token taken from the Secret
//!   `lbmesh-webhook` (key `token`), as a variable or a mounted file;
//! - the BACKEND_PORT it announces is the nodePort of a NodePort Service in
//!   the same file that selects its own pod (and no other) and forwards to a
//!   port of the application container beside it, with
//!   externalTrafficPolicy Local: the node the sidecar announces is the node
//!   whose NodePort reaches that pod;
//! - DST_IP_ENV names a variable filled from `status.hostIP`;
//! - the PROXY protocol is asked for only where the application accepts it;
//! - the ports each example promises: traefik 443→30443, mqtt 8443→30843,
//!   unifi 8080→30808 and 8880→30880, all allowed by the example peer config.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

const SECRET: &str = "lbmesh-webhook";
const SECRET_KEY: &str = "token";

// ---------------------------------------------------------------------------
// Loading

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every `*.yaml` / `*.yml` file of the directory, by name, with its text.
fn manifest_files() -> Vec<(String, String)> {
    let dir = dir();
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            files.push((name, text));
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no YAML file in {}", dir.display());
    files
}

/// One document of one file.
struct Doc {
    file: String,
    index: usize,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        str_at(&self.yaml, &["kind"]).unwrap_or("")
    }
    fn name(&self) -> &str {
        str_at(&self.yaml, &["metadata", "name"]).unwrap_or("")
    }
    fn namespace(&self) -> &str {
        str_at(&self.yaml, &["metadata", "namespace"]).unwrap_or("")
    }
    fn what(&self) -> String {
        format!(
            "{} document {} ({} {})",
            self.file,
            self.index,
            self.kind(),
            self.name()
        )
    }
}

/// Every non-empty document of every file; a file that does not parse fails
/// the test with its name and the parser's message.
fn load() -> Vec<Doc> {
    let mut docs = Vec::new();
    for (file, text) in manifest_files() {
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{file} is not valid YAML: {e}"));
        for (i, yaml) in parsed.into_iter().enumerate() {
            if !yaml.is_null() {
                docs.push(Doc {
                    file: file.clone(),
                    index: i + 1,
                    yaml,
                });
            }
        }
    }
    docs
}

fn at<'a>(y: &'a Yaml, path: &[&str]) -> &'a Yaml {
    path.iter().fold(y, |y, key| &y[*key])
}

fn str_at<'a>(y: &'a Yaml, path: &[&str]) -> Option<&'a str> {
    at(y, path).as_str()
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or(&[])
}

/// A mapping of strings (labels, selectors); other entries are left out.
fn string_map(y: &Yaml) -> BTreeMap<&str, &str> {
    y.as_hash()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str()?, v.as_str()?)))
        .collect()
}

/// Fails the test with every finding, one a line.
fn assert_no_findings(what: &str, findings: &[String]) {
    assert!(
        findings.is_empty(),
        "{what}:\n  - {}",
        findings.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------
// Pods, containers, Services

/// A pod template of a workload.
struct Pod<'a> {
    doc: &'a Doc,
    labels: BTreeMap<&'a str, &'a str>,
    spec: &'a Yaml,
}

fn pods(docs: &[Doc]) -> Vec<Pod<'_>> {
    docs.iter()
        .filter(|d| matches!(d.kind(), "Deployment" | "StatefulSet" | "DaemonSet" | "Job"))
        .map(|doc| {
            let template = at(&doc.yaml, &["spec", "template"]);
            Pod {
                doc,
                labels: string_map(at(template, &["metadata", "labels"])),
                spec: &template["spec"],
            }
        })
        .collect()
}

struct Container<'a> {
    pod: &'a Pod<'a>,
    yaml: &'a Yaml,
    init: bool,
}

impl<'a> Container<'a> {
    fn name(&self) -> &'a str {
        str_at(self.yaml, &["name"]).unwrap_or("")
    }
    fn image(&self) -> &'a str {
        str_at(self.yaml, &["image"]).unwrap_or("")
    }
    /// The lbmesh image, whatever registry it was pushed to.
    fn is_phone_home(&self) -> bool {
        is_lbmesh_image(self.image())
    }
    /// A container that runs to completion before the others start (an
    /// init container that is not a native sidecar).
    fn runs_to_completion(&self) -> bool {
        self.init && str_at(self.yaml, &["restartPolicy"]) != Some("Always")
    }
    fn what(&self) -> String {
        format!(
            "{}: {}container {}",
            self.pod.doc.what(),
            if self.init { "init " } else { "" },
            self.name()
        )
    }
    /// name → env entry.
    fn env(&self) -> BTreeMap<&'a str, &'a Yaml> {
        list(&self.yaml["env"])
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?, e)))
            .collect()
    }
    /// A variable's literal value.
    fn value(&self, name: &str) -> Option<&'a str> {
        self.env().get(name).and_then(|e| e["value"].as_str())
    }
    fn ports(&self) -> &'a [Yaml] {
        list(&self.yaml["ports"])
    }
}

fn is_lbmesh_image(image: &str) -> bool {
    image.rsplit('/').next().unwrap_or("").starts_with("lbmesh")
}

fn containers<'a>(pod: &'a Pod<'a>) -> Vec<Container<'a>> {
    let init = list(&pod.spec["initContainers"])
        .iter()
        .map(|yaml| Container {
            pod,
            yaml,
            init: true,
        });
    let main = list(&pod.spec["containers"]).iter().map(|yaml| Container {
        pod,
        yaml,
        init: false,
    });
    init.chain(main).collect()
}

fn phone_homes<'a>(pods: &'a [Pod<'a>]) -> Vec<Container<'a>> {
    let all: Vec<Container<'a>> = pods.iter().flat_map(containers).collect();
    let found: Vec<Container<'a>> = all.into_iter().filter(Container::is_phone_home).collect();
    assert!(
        found.len() >= 5,
        "expected the examples' phone-home containers (image lbmesh…), found {}",
        found.len()
    );
    found
}

fn services(docs: &[Doc]) -> impl Iterator<Item = &Doc> {
    docs.iter().filter(|d| d.kind() == "Service")
}

fn selects(selector: &BTreeMap<&str, &str>, labels: &BTreeMap<&str, &str>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn port_number(y: &Yaml) -> Option<i64> {
    y.as_i64()
}

/// Where a phone-home container's BACKEND_PORT leads.
struct Route<'a> {
    service: &'a Doc,
    app: Container<'a>,
    container_port: i64,
}

/// Follows BACKEND_PORT as a packet from the LB would: to the NodePort
/// Service of the same file that owns that nodePort, through its selector to
/// the pod, and through targetPort to a port of an application container of
/// that same pod.
fn route<'a>(docs: &'a [Doc], phone_home: &Container<'a>) -> Result<Route<'a>, String> {
    let pod = phone_home.pod;
    let backend: i64 = phone_home
        .value("BACKEND_PORT")
        .and_then(|v| v.parse().ok())
        .ok_or("BACKEND_PORT is missing or not a number")?;
    let owners: Vec<(&Doc, &Yaml)> = services(docs)
        .filter(|s| s.file == pod.doc.file && s.namespace() == pod.doc.namespace())
        .filter(|s| str_at(&s.yaml, &["spec", "type"]) == Some("NodePort"))
        .flat_map(|s| {
            list(at(&s.yaml, &["spec", "ports"]))
                .iter()
                .filter(move |p| port_number(&p["nodePort"]) == Some(backend))
                .map(move |p| (s, p))
        })
        .collect();
    let (service, port) = match owners.as_slice() {
        [] => {
            return Err(format!(
                "BACKEND_PORT {backend} is the nodePort of no NodePort Service in {}",
                pod.doc.file
            ));
        }
        [one] => *one,
        _ => return Err(format!("nodePort {backend} is given by several Services")),
    };
    let selector = string_map(at(&service.yaml, &["spec", "selector"]));
    if !selects(&selector, &pod.labels) {
        return Err(format!(
            "BACKEND_PORT {backend} belongs to Service {}, whose selector {selector:?} does not \
             select this pod (labels {:?})",
            service.name(),
            pod.labels
        ));
    }
    if !matches!(port["protocol"].as_str(), None | Some("TCP")) {
        return Err(format!(
            "Service {} port {backend} is not TCP",
            service.name()
        ));
    }
    let target = match &port["targetPort"] {
        Yaml::BadValue | Yaml::Null => &port["port"],
        t => t,
    };
    for app in containers(pod) {
        if app.init || app.is_phone_home() {
            continue;
        }
        for p in app.ports() {
            let by_name = target.as_str().is_some() && p["name"].as_str() == target.as_str();
            let by_number = port_number(target).is_some() && p["containerPort"] == *target;
            if by_name || by_number {
                let container_port = port_number(&p["containerPort"]).ok_or_else(|| {
                    format!("container {} has a port without containerPort", app.name())
                })?;
                return Ok(Route {
                    service,
                    app,
                    container_port,
                });
            }
        }
    }
    Err(format!(
        "Service {} sends nodePort {backend} to targetPort {target:?}, which is no port of an \
         application container in this pod",
        service.name()
    ))
}

// ---------------------------------------------------------------------------
// Tests

/// (apiVersion, kind, namespaced) of what the examples may use.
const KINDS: &[(&str, &str, bool)] = &[
    ("v1", "Namespace", false),
    ("v1", "Secret", true),
    ("v1", "ConfigMap", true),
    ("v1", "Service", true),
    ("v1", "ServiceAccount", true),
    ("v1", "PersistentVolumeClaim", true),
    ("apps/v1", "Deployment", true),
    ("apps/v1", "StatefulSet", true),
    ("apps/v1", "DaemonSet", true),
    ("batch/v1", "Job", true),
    ("policy/v1", "PodDisruptionBudget", true),
    ("rbac.authorization.k8s.io/v1", "ClusterRole", false),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", false),
    ("rbac.authorization.k8s.io/v1", "Role", true),
    ("rbac.authorization.k8s.io/v1", "RoleBinding", true),
    ("networking.k8s.io/v1", "Ingress", true),
    ("networking.k8s.io/v1", "IngressClass", false),
];

#[test]
fn every_document_parses_as_a_current_kubernetes_object() {
    let docs = load();
    let mut findings = Vec::new();
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "Namespace")
        .map(Doc::name)
        .collect();
    let mut seen = BTreeSet::new();
    let mut node_ports = BTreeMap::new();
    for doc in &docs {
        if !doc.yaml.is_hash() {
            findings.push(format!("{}: not a mapping", doc.what()));
            continue;
        }
        let api = str_at(&doc.yaml, &["apiVersion"]).unwrap_or("");
        let Some(&(_, _, namespaced)) =
            KINDS.iter().find(|(a, k, _)| *a == api && *k == doc.kind())
        else {
            findings.push(format!(
                "{}: apiVersion {api:?} kind {:?} is not one current Kubernetes serves",
                doc.what(),
                doc.kind()
            ));
            continue;
        };
        if doc.name().is_empty() {
            findings.push(format!("{}: no metadata.name", doc.what()));
        }
        if namespaced && !namespaces.contains(doc.namespace()) {
            findings.push(format!(
                "{}: namespace {:?} is not one of the examples' namespaces {namespaces:?}",
                doc.what(),
                doc.namespace()
            ));
        }
        if !namespaced && !doc.namespace().is_empty() {
            findings.push(format!(
                "{}: cluster-scoped but has a namespace",
                doc.what()
            ));
        }
        if !seen.insert((doc.kind(), doc.namespace(), doc.name())) {
            findings.push(format!(
                "{}: defined twice (one would overwrite the other)",
                doc.what()
            ));
        }
        if doc.kind() == "Service" {
            for p in list(at(&doc.yaml, &["spec", "ports"])) {
                if let Some(n) = port_number(&p["nodePort"]) {
                    if !(30000..=32767).contains(&n) {
                        findings.push(format!("{}: nodePort {n} outside 30000-32767", doc.what()));
                    }
                    if let Some(other) = node_ports.insert(n, doc.what()) {
                        findings.push(format!(
                            "{}: nodePort {n} already taken by {other}",
                            doc.what()
                        ));
                    }
                }
            }
        }
    }
    for pod in pods(&docs) {
        let selector = string_map(at(&pod.doc.yaml, &["spec", "selector", "matchLabels"]));
        if !selects(&selector, &pod.labels) {
            findings.push(format!(
                "{}: spec.selector.matchLabels {selector:?} does not match the template's labels \
                 {:?}",
                pod.doc.what(),
                pod.labels
            ));
        }
        // Kubernetes takes only strings as env values ("443", not 443).
        for c in containers(&pod) {
            for e in list(&c.yaml["env"]) {
                let name = e["name"].as_str().unwrap_or("(no name)");
                let ok = match &e["value"] {
                    Yaml::String(_) => e["valueFrom"].is_badvalue(),
                    Yaml::BadValue => e["valueFrom"].is_hash(),
                    _ => false,
                };
                if !ok {
                    findings.push(format!(
                        "{}: env {name} needs a quoted string value or a valueFrom",
                        c.what()
                    ));
                }
            }
        }
    }
    assert_no_findings("the manifests would not apply as meant", &findings);
}

/// The Secret the examples read: `lbmesh-webhook` with the key `token`.
fn secret_keys(docs: &[Doc], namespace: &str, name: &str) -> BTreeSet<String> {
    docs.iter()
        .filter(|d| d.kind() == "Secret" && d.namespace() == namespace && d.name() == name)
        .flat_map(|d| {
            ["data", "stringData"]
                .into_iter()
                .flat_map(|field| string_map(&d.yaml[field]))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| k.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_token_secret_exists_with_key_token() {
    let docs = load();
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d.kind() == "Secret" && d.name() == SECRET)
        .map(Doc::namespace)
        .collect();
    assert!(!namespaces.is_empty(), "no Secret {SECRET} in the examples");
    for ns in namespaces {
        assert!(
            secret_keys(&docs, ns, SECRET).contains(SECRET_KEY),
            "Secret {SECRET} in {ns} has no non-empty key {SECRET_KEY}"
        );
    }
}

/// The token: WEBHOOK_TOKEN from a secretKeyRef, or WEBHOOK_TOKEN_FILE
/// pointing into a mounted Secret volume; either way from a Secret that
/// exists in the pod's namespace with that key.
fn check_token(docs: &[Doc], c: &Container<'_>) -> Result<(), String> {
    let ns = c.pod.doc.namespace();
    let env = c.env();
    if let Some(entry) = env.get("WEBHOOK_TOKEN") {
        let r = at(entry, &["valueFrom", "secretKeyRef"]);
        let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) else {
            return Err("WEBHOOK_TOKEN is not taken from a secretKeyRef (do not write tokens into manifests)".into());
        };
        if !secret_keys(docs, ns, name).contains(key) {
            return Err(format!(
                "WEBHOOK_TOKEN reads key {key} of Secret {name}, which the examples do not define in {ns}"
            ));
        }
        return Ok(());
    }
    let Some(file) = c.value("WEBHOOK_TOKEN_FILE") else {
        return Err("neither WEBHOOK_TOKEN nor WEBHOOK_TOKEN_FILE is set".into());
    };
    let path = Path::new(file);
    let (Some(parent), Some(base)) = (path.parent(), path.file_name()) else {
        return Err(format!("WEBHOOK_TOKEN_FILE {file:?} is not a file path"));
    };
    let base = base.to_string_lossy();
    let Some(mount) = list(&c.yaml["volumeMounts"])
        .iter()
        .find(|m| m["mountPath"].as_str().map(Path::new) == Some(parent))
    else {
        return Err(format!(
            "WEBHOOK_TOKEN_FILE {file:?}: no volume is mounted at {}",
            parent.display()
        ));
    };
    let volume_name = mount["name"].as_str().unwrap_or("");
    let Some(volume) = list(&c.pod.spec["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(volume_name))
    else {
        return Err(format!("volume {volume_name} is mounted but not defined"));
    };
    let Some(secret) = at(volume, &["secret", "secretName"]).as_str() else {
        return Err(format!("volume {volume_name} is not a Secret volume"));
    };
    let items = list(&volume["secret"]["items"]);
    let key = if items.is_empty() {
        Some(base.as_ref())
    } else {
        items
            .iter()
            .find(|i| i["path"].as_str() == Some(base.as_ref()))
            .and_then(|i| i["key"].as_str())
    };
    match key {
        Some(key) if secret_keys(docs, ns, secret).contains(key) => Ok(()),
        _ => Err(format!(
            "WEBHOOK_TOKEN_FILE {file:?} is no key of Secret {secret} as defined in {ns}"
        )),
    }
}

/// The checks of one phone-home container's own environment.
fn check_env(docs: &[Doc], c: &Container<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    let env = c.env();
    for required in [
        "FRONTEND_PORT",
        "BACKEND_PORT",
        "NAME",
        "REPEAT_INTERVAL",
        "WEBHOOK",
    ] {
        if c.value(required).is_none_or(str::is_empty) {
            problems.push(format!("{required} is not set (as a string)"));
        }
    }
    if let Some(v) = c.value("FRONTEND_PORT") {
        if !v.parse::<u16>().is_ok_and(|p| p > 0) {
            problems.push(format!("FRONTEND_PORT {v:?} is not a port"));
        }
    }
    if let Some(v) = c.value("BACKEND_PORT") {
        if !v.parse::<u16>().is_ok_and(|p| (30000..=32767).contains(&p)) {
            problems.push(format!(
                "BACKEND_PORT {v:?} is not a NodePort (30000-32767)"
            ));
        }
    }
    if let Some(v) = c.value("NAME") {
        let valid = (1..=63).contains(&v.len())
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !valid {
            problems.push(format!("NAME {v:?} is not [A-Za-z0-9_.-]{{1,63}}"));
        }
    }
    if let Some(v) = c.value("REPEAT_INTERVAL") {
        if v != "once" && !v.parse::<u64>().is_ok_and(|s| s > 0) {
            problems.push(format!(
                "REPEAT_INTERVAL {v:?} is neither seconds nor \"once\""
            ));
        }
    }
    if let Some(v) = c.value("WEBHOOK") {
        for url in v.split(',').map(str::trim) {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.ends_with("/hooks/update-haproxy");
            if !ok {
                problems.push(format!(
                    "WEBHOOK entry {url:?} is not an http(s) URL of /hooks/update-haproxy"
                ));
            }
        }
    }
    if let Err(e) = check_token(docs, c) {
        problems.push(e);
    }
    if let Some(v) = c.value("SEND_PROXY") {
        if !matches!(v, "" | "send-proxy") {
            problems.push(format!(
                "SEND_PROXY {v:?} is neither \"send-proxy\" nor empty"
            ));
        }
    }
    if let Some(v) = c.value("DST_IP") {
        if v.parse::<IpAddr>().is_err() && !(v.starts_with("$(") && v.ends_with(')')) {
            problems.push(format!("DST_IP {v:?} is not an address"));
        }
    }
    if env.contains_key("DST_IP_ENV") && c.value("DST_IP_ENV").is_none() {
        problems.push("DST_IP_ENV has no literal value".into());
    }
    if let Some(v) = c.value("WEBHOOK_CA") {
        if !v.starts_with('/') {
            problems.push(format!("WEBHOOK_CA {v:?} is not an absolute path"));
        }
    }
    problems
}

#[test]
fn phone_home_containers_have_what_lbmesh_phone_home_reads() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    for c in phone_homes(&pods) {
        for p in check_env(&docs, &c) {
            findings.push(format!("{}: {p}", c.what()));
        }
    }
    assert_no_findings("phone-home containers lack what they need", &findings);
}

#[test]
fn backend_port_reaches_the_application_in_the_same_pod() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    for c in phone_homes(&pods) {
        let route = match route(&docs, &c) {
            Ok(r) => r,
            Err(e) => {
                findings.push(format!("{}: {e}", c.what()));
                continue;
            }
        };
        let service = route.service;
        // Without Local, a node's NodePort may forward to a pod on another
        // node, and the node the sidecar announced proves nothing.
        if str_at(&service.yaml, &["spec", "externalTrafficPolicy"]) != Some("Local") {
            findings.push(format!(
                "{}: Service {} needs externalTrafficPolicy: Local, so the announced node's \
                 NodePort reaches the pod on that node",
                c.what(),
                service.name()
            ));
        }
        let selector = string_map(at(&service.yaml, &["spec", "selector"]));
        let selected: Vec<String> = pods
            .iter()
            .filter(|p| p.doc.namespace() == service.namespace() && selects(&selector, &p.labels))
            .map(|p| p.doc.what())
            .collect();
        if selected.len() != 1 {
            findings.push(format!(
                "{}: Service {} selects {} pod templates: {selected:?}",
                c.what(),
                service.name(),
                selected.len()
            ));
        }
    }
    assert_no_findings("BACKEND_PORT would not reach the right pod", &findings);
}

#[test]
fn dst_ip_comes_from_the_node_of_the_pod() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    for c in phone_homes(&pods) {
        if c.value("DST_IP").is_some() {
            continue;
        }
        let Some(var) = c.value("DST_IP_ENV") else {
            findings.push(format!(
                "{}: neither DST_IP nor DST_IP_ENV: the examples announce the node's IP from the \
                 Downward API",
                c.what()
            ));
            continue;
        };
        let path = c
            .env()
            .get(var)
            .and_then(|e| at(e, &["valueFrom", "fieldRef", "fieldPath"]).as_str());
        if path != Some("status.hostIP") {
            findings.push(format!(
                "{}: DST_IP_ENV={var} but {var} is {path:?}, not fieldRef status.hostIP",
                c.what()
            ));
        }
    }
    assert_no_findings("the announced address is not the node's", &findings);
}

#[test]
fn proxy_protocol_is_sent_only_where_it_is_accepted() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    let mut senders = 0;
    for c in phone_homes(&pods) {
        if c.value("SEND_PROXY") != Some("send-proxy") {
            continue;
        }
        senders += 1;
        let Ok(route) = route(&docs, &c) else {
            continue; // reported by backend_port_reaches_the_application_in_the_same_pod
        };
        // Traefik: the entrypoint listening on the container port must have
        // proxyProtocol settings.
        let args: Vec<&str> = list(&route.app.yaml["args"])
            .iter()
            .filter_map(Yaml::as_str)
            .collect();
        let entrypoint = args.iter().find_map(|a| {
            let rest = a.strip_prefix("--entryPoints.")?;
            let (name, address) = rest.split_once(".address=")?;
            let port = address.rsplit(':').next()?.trim_end_matches("/tcp");
            (port.parse() == Ok(route.container_port)).then_some(name)
        });
        let accepts = entrypoint.is_some_and(|ep| {
            let trusted = format!("--entryPoints.{ep}.proxyProtocol.trustedIPs=");
            let insecure = format!("--entryPoints.{ep}.proxyProtocol.insecure=true");
            args.iter().any(|a| {
                a.strip_prefix(&trusted).is_some_and(|ips| !ips.is_empty()) || *a == insecure
            })
        });
        if !accepts {
            findings.push(format!(
                "{}: SEND_PROXY=send-proxy, but container {} does not accept the PROXY protocol on \
                 port {}",
                c.what(),
                route.app.name(),
                route.container_port
            ));
        }
    }
    assert!(senders > 0, "no example asks for the PROXY protocol");
    assert_no_findings(
        "PROXY protocol sent to a server that does not expect it",
        &findings,
    );
}

#[test]
fn pods_leave_time_to_delete_the_registration() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    for pod in &pods {
        let has_sidecar = containers(pod)
            .iter()
            .any(|c| c.is_phone_home() && !c.runs_to_completion());
        // Kubernetes' default is 30 s.
        let grace = pod.spec["terminationGracePeriodSeconds"]
            .as_i64()
            .unwrap_or(30);
        if has_sidecar && grace < 10 {
            findings.push(format!(
                "{}: terminationGracePeriodSeconds {grace} < 10",
                pod.doc.what()
            ));
        }
    }
    assert_no_findings(
        "the phone-home has no time to delete its registration",
        &findings,
    );
}

#[test]
fn init_containers_register_once_and_sidecars_repeat() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    let mut once = 0;
    for c in phone_homes(&pods) {
        let interval = c.value("REPEAT_INTERVAL").unwrap_or("");
        if c.runs_to_completion() {
            once += 1;
            if interval != "once" {
                findings.push(format!(
                    "{}: an init container must exit: REPEAT_INTERVAL=once, not {interval:?} \
                     (the pod would never start)",
                    c.what()
                ));
            }
        } else if interval == "once" {
            findings.push(format!(
                "{}: REPEAT_INTERVAL=once in a container that Kubernetes restarts when it exits",
                c.what()
            ));
        }
    }
    assert!(
        once > 0,
        "no example shows REPEAT_INTERVAL=once in an init container"
    );
    assert_no_findings("phone-home containers would misbehave", &findings);
}

/// Ports the example peer config (deploy/config/lbmesh.toml) lets clients claim.
fn allowed_ports() -> Vec<(u16, u16)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config/lbmesh.toml");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config: toml::Value = text.parse().expect("deploy/config/lbmesh.toml parses");
    let ranges = config["registry"]["allowed-ports"]
        .as_array()
        .expect("registry.allowed-ports in the example config");
    ranges
        .iter()
        .map(|r| {
            let text = match r {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let (lo, hi) = text.split_once('-').unwrap_or((&text, &text));
            (
                lo.trim().parse().expect("a port"),
                hi.trim().parse().expect("a port"),
            )
        })
        .collect()
}

#[test]
fn examples_register_the_documented_ports() {
    let docs = load();
    let pods = pods(&docs);
    let phone_homes = phone_homes(&pods);
    // (file, NAME, FRONTEND_PORT, BACKEND_PORT)
    let expected = [
        ("traefik.yaml", "traefik", "443", "30443"),
        ("mqtt.yaml", "mqtt", "8443", "30843"),
        ("unifi.yaml", "unifi-adoption", "8080", "30808"),
        ("unifi.yaml", "unifi-hotspot", "8880", "30880"),
    ];
    let mut findings = Vec::new();
    for (file, name, frontend, backend) in expected {
        let found = phone_homes.iter().any(|c| {
            c.pod.doc.file == file
                && !c.runs_to_completion()
                && c.value("NAME") == Some(name)
                && c.value("FRONTEND_PORT") == Some(frontend)
                && c.value("BACKEND_PORT") == Some(backend)
        });
        if !found {
            findings.push(format!(
                "{file}: no repeating phone-home with NAME={name} FRONTEND_PORT={frontend} \
                 BACKEND_PORT={backend}"
            ));
        }
    }
    // The Traefik sidecar as the README describes it.
    let traefik = phone_homes
        .iter()
        .find(|c| c.pod.doc.file == "traefik.yaml" && c.value("NAME") == Some("traefik"));
    if let Some(c) = traefik {
        let peers = c.value("WEBHOOK").map_or(0, |w| w.split(',').count());
        if peers < 2 {
            findings.push("traefik.yaml: WEBHOOK should list several LB peers".into());
        }
        if c.value("SEND_PROXY") != Some("send-proxy") {
            findings.push("traefik.yaml: SEND_PROXY should be send-proxy".into());
        }
        if c.value("REPEAT_INTERVAL") != Some("600") {
            findings.push("traefik.yaml: REPEAT_INTERVAL should be 600".into());
        }
        if c.value("DST_IP_ENV").is_none() {
            findings.push("traefik.yaml: DST_IP_ENV should be set".into());
        }
        let token = c.env().get("WEBHOOK_TOKEN").copied();
        if token.is_none_or(|t| at(t, &["valueFrom", "secretKeyRef"]).is_badvalue()) {
            findings.push("traefik.yaml: WEBHOOK_TOKEN should come from a secretKeyRef".into());
        }
    }
    // One name per frontend port (a name owns its frontend on the LB), and
    // every frontend allowed by the example peer config.
    let allowed = allowed_ports();
    let mut owners: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for c in &phone_homes {
        let (Some(frontend), Some(name)) = (c.value("FRONTEND_PORT"), c.value("NAME")) else {
            continue;
        };
        owners.entry(frontend).or_default().insert(name);
        let port: u16 = frontend.parse().unwrap_or(0);
        if !allowed.iter().any(|(lo, hi)| (*lo..=*hi).contains(&port)) {
            findings.push(format!(
                "{}: FRONTEND_PORT {port} is not in allowed-ports of deploy/config/lbmesh.toml",
                c.what()
            ));
        }
    }
    for (port, names) in owners {
        if names.len() > 1 {
            findings.push(format!(
                "frontend port {port} claimed by several names: {names:?}"
            ));
        }
    }
    assert_no_findings("the examples do not expose what they promise", &findings);
}

/// Documentation addresses only: 198.18.0.0/15, the TEST-NETs, loopback and
/// the unspecified address.
fn documentation_ip(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    (a == 198 && (b == 18 || b == 19))
        || (a, b, c) == (192, 0, 2)
        || (a, b, c) == (198, 51, 100)
        || (a, b, c) == (203, 0, 113)
        || ip.is_loopback()
        || ip.is_unspecified()
}

fn documentation_host(host: &str) -> bool {
    [".example.com", ".example.invalid"]
        .iter()
        .any(|d| host.ends_with(d) || host == &d[1..])
}

#[test]
fn examples_use_documentation_names_and_addresses() {
    let docs = load();
    let pods = pods(&docs);
    let mut findings = Vec::new();
    let readme = fs::read_to_string(dir().join("README.md")).unwrap_or_default();
    let texts = manifest_files()
        .into_iter()
        .chain([("README.md".to_string(), readme)]);
    for (file, text) in texts {
        for word in text.split(|ch: char| !(ch.is_ascii_digit() || ch == '.')) {
            let word = word.trim_matches('.');
            if let Ok(ip) = word.parse::<Ipv4Addr>() {
                if !documentation_ip(ip) {
                    findings.push(format!(
                        "{file}: address {ip} is not a documentation address"
                    ));
                }
            }
        }
    }
    for c in pods.iter().flat_map(containers) {
        // Images by short name: the registry is the user's choice.
        let image = c.image();
        let first = image.split('/').next().unwrap_or("");
        if image.contains('/') && (first.contains('.') || first.contains(':')) {
            findings.push(format!("{}: image {image} names a registry", c.what()));
        }
        if c.is_phone_home() {
            for url in c.value("WEBHOOK").unwrap_or("").split(',') {
                let rest = url.trim().split_once("://").map_or("", |(_, r)| r);
                let host = rest.split(['/', ':']).next().unwrap_or("");
                if !documentation_host(host) {
                    findings.push(format!("{}: WEBHOOK host {host:?}", c.what()));
                }
            }
        }
    }
    for doc in docs.iter().filter(|d| d.kind() == "Ingress") {
        for rule in list(at(&doc.yaml, &["spec", "rules"])) {
            let host = rule["host"].as_str().unwrap_or("");
            if !documentation_host(host) {
                findings.push(format!("{}: host {host:?}", doc.what()));
            }
        }
    }
    assert_no_findings("the examples name real hosts or addresses", &findings);
}
