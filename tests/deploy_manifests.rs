//! The deployment files say what the node really does: every manifest under `deploy/kubernetes`, the Helm chart
//! `deploy/helm/regent` rendered (by the renderer in `deploy/helm.rs`: the chart keeps to the part of Helm's
//! language it implements), the Compose files and the Dockerfile are parsed, and checked against the node's own
//! configuration loader, defaults and command line:
//!
//! - every environment variable is one Regent reads (`regent::config::ENV_VARS`) or one listed here as a
//!   documented non-Regent variable, and the values given load through `Config::load_with` (so they parse and
//!   validate);
//! - ports (container ports, services, EXPOSE, published ports) are the ones the configuration uses;
//! - container arguments parse with the `regent` command line;
//! - probes ask `/health` (liveness) and `/ready` (readiness) on the admin port;
//! - the grace period covers the leave timeout plus the drain of requests in flight;
//! - the objects hang together (selectors, service names, the service account, the handler's service).
//!
//! Not checked: what Kubernetes itself would say (no API server here), and Helm features outside the renderer's
//! part of the language (the renderer refuses them).

mod deploy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use clap::Parser;
use regent::cli::Cli;
use regent::config::{Config, ENV_VARS, Overrides};
use serde_json::{Value, json};

/// Variables that are not Regent's but are set in the deployment files on purpose.
const OTHER_VARS: &[(&str, &str)] = &[
    ("NO_COLOR", "the image: plain log lines, no terminal colours (tracing-subscriber honours it)"),
    ("POSTGRES_USER", "the PostgreSQL container"),
    ("POSTGRES_PASSWORD", "the PostgreSQL container"),
    ("POSTGRES_DB", "the PostgreSQL container"),
];

/// The node's time to stop after SIGTERM, at most: the leave timeout, then the drain of requests in flight
/// (`COS_COMMAND_HANDLER_TIMEOUT` + 2 s, `Node::shutdown`).
fn stop_budget_secs(config: &Config) -> u64 {
    config.cluster.leave_timeout_ms.div_ceil(1000) + config.entities.command_handler_timeout_secs + 2
}

fn is_regent_var(name: &str) -> bool {
    ENV_VARS.iter().any(|v| v.name == name || v.aliases.contains(&name))
}

fn assert_known_var(name: &str, whose: &str) {
    assert!(
        is_regent_var(name) || OTHER_VARS.iter().any(|(n, _)| *n == name),
        "{whose}: {name} is neither a variable Regent reads (regent::config::ENV_VARS) nor a documented other one"
    );
}

/// Loads the configuration a node would get from these variables (secrets replaced by stand-ins).
fn load_config(env: &BTreeMap<String, String>, whose: &str) -> Config {
    let lookup = |name: &str| env.get(name).cloned();
    Config::load_with(None, &lookup, &Overrides::default())
        .unwrap_or_else(|e| panic!("{whose}: the node would refuse this configuration: {e}"))
}

fn parse_args(args: &[String], whose: &str) {
    let argv = std::iter::once("regent".to_string()).chain(args.iter().cloned());
    if let Err(e) = Cli::try_parse_from(argv) {
        panic!("{whose}: `regent {}` does not parse: {e}", args.join(" "));
    }
}

fn yaml_documents(text: &str, whose: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            let value = serde_yaml_ng::Value::deserialize(document).unwrap_or_else(|e| panic!("{whose}: {e}"));
            serde_json::to_value(value).unwrap_or_else(|e| panic!("{whose}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().map(|a| a.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect()).unwrap_or_default()
}

/// Kubernetes objects by kind and name.
struct Objects(Vec<Value>);

impl Objects {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.0.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let found = self.of_kind(kind);
        assert_eq!(found.len(), 1, "exactly one {kind}");
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Value {
        self.0
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} named {name}"))
    }
}

/// Whether `labels` has every label of `selector`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The checks every Kubernetes rendering of Regent passes (plain manifests and the chart).
fn check_kubernetes(objects: &Objects, whose: &str) {
    for object in &objects.0 {
        for field in ["apiVersion", "kind"] {
            assert!(object[field].is_string(), "{whose}: an object without {field}: {object}");
        }
        assert!(object["metadata"]["name"].is_string(), "{whose}: an object without a name: {object}");
    }
    let sts = objects.one("StatefulSet");
    let spec = &sts["spec"];
    let pod = &spec["template"];
    assert!(selects(&spec["selector"]["matchLabels"], &pod["metadata"]["labels"]), "{whose}: the selector matches");
    assert!(spec["replicas"].as_i64().unwrap_or(0) >= 3, "{whose}: three nodes or more");
    let containers = pod["spec"]["containers"].as_array().expect("containers");
    let regent = &containers[0];

    // The environment: only known names, values the node accepts.
    let mut env = BTreeMap::new();
    for var in regent["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("an env name");
        assert_known_var(name, whose);
        let value = if let Some(value) = var.get("value") {
            assert!(value.is_string(), "{whose}: {name}'s value must be a string, not {value}");
            value.as_str().unwrap().to_string()
        } else if var["valueFrom"]["secretKeyRef"]["name"].is_string() {
            format!("stand-in-for-{}", var["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap())
        } else {
            assert_eq!(var["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP", "{whose}: {name}");
            "10.0.0.7".to_string()
        };
        env.insert(name.to_string(), value);
    }
    assert_eq!(env.get("POD_IP").map(String::as_str), Some("10.0.0.7"), "{whose}: POD_IP from the downward API");
    for unset in ["REGENT_CLUSTER_HOST", "REGENT_NODE_NAME"] {
        assert!(!env.contains_key(unset), "{whose}: {unset} must default (to POD_IP / the pod name)");
    }
    let config = load_config(&env, whose);
    assert!(config.cluster.enabled, "{whose}: clustering on");
    assert_eq!(config.store.backend, regent::config::Backend::Postgres, "{whose}: the PostgreSQL store");
    assert_eq!(config.cluster.pod_ip, "10.0.0.7");
    let cookie = regent["env"].as_array().unwrap().iter().find(|v| v["name"] == "REGENT_CLUSTER_COOKIE").unwrap();
    assert!(cookie["valueFrom"]["secretKeyRef"].is_object(), "{whose}: the cookie comes from a Secret");
    parse_args(&strings(&regent["args"]), whose);

    // Ports: the node's own.
    let ports: BTreeMap<String, i64> = regent["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap()))
        .collect();
    let expected = BTreeMap::from([
        ("admin".to_string(), i64::from(config.admin.port)),
        ("cluster".to_string(), i64::from(config.cluster.port)),
        ("grpc".to_string(), i64::from(config.server.port)),
    ]);
    assert_eq!(ports, expected, "{whose}: container ports");
    let defaults = Config::default();
    assert_eq!(
        (config.server.port, config.cluster.port, config.admin.port),
        (defaults.server.port, defaults.cluster.port, defaults.admin.port),
        "{whose}: the default ports"
    );
    assert_eq!(config.admin.address, "0.0.0.0", "{whose}: the probes reach the admin endpoint from outside");

    // Probes: /health for liveness (and start-up), /ready for readiness, on the admin port.
    for (probe, path) in [("livenessProbe", "/health"), ("startupProbe", "/health"), ("readinessProbe", "/ready")] {
        let get = &regent[probe]["httpGet"];
        assert_eq!(get["path"], path, "{whose}: {probe}");
        assert!(get["port"] == "admin" || get["port"] == config.admin.port, "{whose}: {probe} on the admin port");
    }

    // Termination: the leave and the drain fit in the grace period.
    let grace = pod["spec"]["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    assert!(
        grace >= stop_budget_secs(&config),
        "{whose}: terminationGracePeriodSeconds {grace} < leave {} ms + drain",
        config.cluster.leave_timeout_ms
    );
    let security = &pod["spec"]["securityContext"];
    assert_eq!(security["runAsNonRoot"], true, "{whose}: non-root");
    assert_eq!(security["runAsUser"], 10001, "{whose}: the image's user");

    // Services: the headless one governs the StatefulSet and lists unready pods; the client one serves gRPC.
    let headless = objects.named("Service", spec["serviceName"].as_str().expect("serviceName"));
    assert_eq!(headless["spec"]["clusterIP"], "None", "{whose}: headless");
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "{whose}: joining pods resolve");
    for service in objects.of_kind("Service") {
        let selector = &service["spec"]["selector"];
        let ports = service["spec"]["ports"].as_array().expect("service ports");
        if !selects(selector, &pod["metadata"]["labels"]) {
            continue;
        }
        for port in ports {
            let target = port["targetPort"].as_str().expect("a named target port");
            assert_eq!(Some(&port["port"].as_i64().unwrap()), ports_of(regent).get(target), "{whose}: {port}");
        }
    }

    // The service account, its RBAC, the disruption budget.
    let account = pod["spec"]["serviceAccountName"].as_str().expect("serviceAccountName");
    objects.named("ServiceAccount", account);
    let binding = objects.one("RoleBinding");
    assert_eq!(binding["subjects"][0]["name"], account, "{whose}: the binding names the pods' account");
    let role = objects.named("Role", binding["roleRef"]["name"].as_str().unwrap());
    assert!(strings(&role["rules"][0]["verbs"]).contains(&"list".to_string()), "{whose}: the role lists pods");
    let pdb = objects.one("PodDisruptionBudget");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], &pod["metadata"]["labels"]), "{whose}: PDB selects");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1, "{whose}: one node at a time");

    // The example handler, when present, is the one the nodes call.
    if let Some(handler) = objects.of_kind("Deployment").first() {
        let container = &handler["spec"]["template"]["spec"]["containers"][0];
        let args = strings(&container["args"]);
        parse_args(&args, whose);
        assert_eq!(args[0], "example-handler");
        let service = objects.named("Service", &config.write_side.host);
        assert_eq!(service["spec"]["ports"][0]["port"], i64::from(config.write_side.port), "{whose}: handler port");
    }
}

fn ports_of(container: &Value) -> BTreeMap<String, i64> {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_string(), p["containerPort"].as_i64().unwrap()))
        .collect()
}

#[test]
fn kubernetes_manifests_are_complete_and_match_the_node() {
    let dir = deploy::deploy("kubernetes");
    let kustomization = &yaml_documents(&read(&dir.join("kustomization.yaml")), "kustomization.yaml")[0];
    let listed: BTreeSet<String> = strings(&kustomization["resources"]).into_iter().collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml lists every manifest");
    let objects: Vec<Value> = present.iter().flat_map(|f| yaml_documents(&read(&dir.join(f)), f)).collect();
    check_kubernetes(&Objects(objects), "deploy/kubernetes");
}

fn chart_values() -> Value {
    json!({ "cluster": { "cookie": "test-cookie" }, "database": { "password": "test-password" } })
}

fn render_chart(values: &Value) -> Result<Objects, String> {
    let rendered = deploy::helm::render(&deploy::deploy("helm/regent"), values, "rel", "prod")?;
    Ok(Objects(rendered.iter().flat_map(|(name, text)| yaml_documents(text, name)).collect()))
}

#[test]
fn helm_chart_renders_and_matches_the_node() {
    let objects = render_chart(&chart_values()).unwrap();
    check_kubernetes(&objects, "helm chart (defaults)");
    let sts = objects.one("StatefulSet");
    assert_eq!(sts["metadata"]["name"], "rel-regent");
    assert_eq!(sts["spec"]["template"]["spec"]["containers"][0]["image"], "regent:0.1.0", "the appVersion tag");
    let secret = objects.one("Secret");
    assert_eq!(secret["stringData"]["cluster-cookie"], "test-cookie");
    assert_eq!(objects.one("RoleBinding")["subjects"][0]["namespace"], "prod");

    // Values change what they say, and only that.
    let mut values = chart_values();
    deploy::helm::merge(
        &mut values,
        &json!({
            "replicaCount": 5,
            "cluster": { "existingSecret": "mine", "leaveTimeoutMs": 60000 },
            "terminationGracePeriodSeconds": 75,
            "podDisruptionBudget": { "enabled": false },
            "exampleHandler": { "enabled": false },
            "writeSide": { "host": "my-handler", "port": 7000 },
            "extraEnv": [{ "name": "COS_READ_SIDE_ENABLED", "value": "true" }],
            "image": { "tag": "1.2.3" },
        }),
    );
    let objects = render_chart(&values).unwrap();
    assert!(objects.of_kind("Secret").is_empty(), "no Secret with existingSecret");
    assert!(objects.of_kind("PodDisruptionBudget").is_empty());
    assert!(objects.of_kind("Deployment").is_empty());
    let sts = objects.one("StatefulSet");
    assert_eq!(sts["spec"]["replicas"], 5);
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "regent:1.2.3");
    let env: BTreeMap<&str, &Value> =
        container["env"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    assert_eq!(env["REGENT_CLUSTER_COOKIE"]["valueFrom"]["secretKeyRef"]["name"], "mine");
    assert_eq!(env["COS_WRITE_SIDE_HOST"]["value"], "my-handler");
    assert_eq!(env["COS_READ_SIDE_ENABLED"]["value"], "true");
    assert_eq!(env["REGENT_CLUSTER_LEAVE_TIMEOUT_MS"]["value"], "60000");

    // A grace period too short for the leave timeout is caught.
    let mut short = chart_values();
    deploy::helm::merge(
        &mut short,
        &json!({ "cluster": { "leaveTimeoutMs": 60000 }, "terminationGracePeriodSeconds": 45 }),
    );
    let objects = render_chart(&short).unwrap();
    let caught = std::panic::catch_unwind(|| check_kubernetes(&objects, "short grace period"));
    assert!(caught.is_err(), "a 45 s grace period with a 60 s leave timeout must fail the check");

    // The cookie is required.
    let err = render_chart(&json!({})).err().expect("no cookie, no rendering");
    assert!(err.contains("cluster.cookie is required"), "{err}");
}

#[test]
fn helm_readme_lists_every_value_with_its_default() {
    let dir = deploy::deploy("helm/regent");
    let values = &yaml_documents(&read(&dir.join("values.yaml")), "values.yaml")[0];
    let readme = read(&dir.join("README.md"));
    let mut leaves = Vec::new();
    collect_leaves(values, String::new(), &mut leaves);
    for (key, default) in leaves {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("README.md has no row for `{key}`"));
        let shown = match &default {
            Value::String(s) => format!("`{s:?}`"),
            other => format!("`{}`", serde_json::to_string(other).unwrap()),
        };
        assert!(row.contains(&shown), "README.md's row for `{key}` must show its default {shown}: {row}");
    }
}

/// Leaf values of `values.yaml` by dotted key; lists and empty maps are leaves.
fn collect_leaves(value: &Value, prefix: String, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, value) in map {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                collect_leaves(value, key, out);
            }
        }
        other => out.push((prefix, other.clone())),
    }
}

/// `${VAR}`, `${VAR:-default}` and `${VAR:?message}` replaced as Compose would, with `vars`.
fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed ${") + start;
        let inner = &rest[start + 2..end];
        let (name, fallback) = match inner.find([':', '?', '-']) {
            Some(i) => (&inner[..i], inner[i..].trim_start_matches(':')),
            None => (inner, ""),
        };
        let value = vars.get(name).copied().map(str::to_string).unwrap_or_else(|| {
            let default = fallback.strip_prefix('-').unwrap_or_default();
            assert!(!fallback.starts_with('?'), "${{{name}}} is required: the test sets it");
            default.to_string()
        });
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

fn compose(files: &[&str]) -> Value {
    let vars = BTreeMap::from([("REGENT_CLUSTER_COOKIE", "test-cookie"), ("POSTGRES_PASSWORD", "test-password")]);
    let mut merged = Value::Null;
    for file in files {
        let text = interpolate(&read(&deploy::deploy(file)), &vars);
        let document = yaml_documents(&text, file).remove(0);
        deploy::helm::merge(&mut merged, &document);
    }
    merged
}

#[test]
fn compose_files_match_the_node() {
    let project = compose(&["compose.yaml", "compose.debian-postgres.yaml", "compose.test.yaml"]);
    let services = project["services"].as_object().expect("services");
    for name in ["postgres", "regent", "example-handler", "otel-collector"] {
        assert!(services.contains_key(name), "compose.yaml has {name}");
    }
    assert_eq!(strings(&services["otel-collector"]["profiles"]), ["otel"], "the collector is optional");
    assert!(services["postgres"]["build"].is_object(), "the Debian override builds PostgreSQL");

    let regent = &services["regent"];
    for per_node in ["container_name", "hostname"] {
        assert!(regent.get(per_node).is_none(), "no {per_node}: --scale needs identical replicas");
    }
    let env: BTreeMap<String, String> = regent["environment"]
        .as_object()
        .expect("environment as a map")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
        .collect();
    for name in env.keys() {
        assert_known_var(name, "compose regent");
    }
    for unset in ["REGENT_CLUSTER_HOST", "REGENT_NODE_NAME"] {
        assert!(!env.contains_key(unset), "{unset} defaults to the container's host name");
    }
    let config = load_config(&env, "compose regent");
    assert!(config.cluster.enabled);
    assert_eq!(config.service_name, "regent", "COS_SERVICE_NAME is the service, for DNS discovery");
    assert_eq!(config.cluster.deployment_mode, "docker");
    assert_eq!(config.store.postgres.host, "postgres");
    assert!(services.contains_key(&config.write_side.host), "the handler is a service");
    assert_eq!(config.cluster.lease_ttl_ms, 2000, "compose.test.yaml shortens the lease");
    parse_args(&strings(&regent["command"]), "compose regent");
    let handler_args = strings(&services["example-handler"]["command"]);
    parse_args(&handler_args, "compose example-handler");
    assert!(handler_args.join(" ").ends_with(&format!("--port {}", config.write_side.port)));

    // Published ports: the node's own, on an ephemeral loopback port (several replicas cannot share one).
    let published: BTreeSet<String> = strings(&regent["ports"]).into_iter().collect();
    let expected: BTreeSet<String> =
        [config.server.port, config.admin.port].iter().map(|p| format!("127.0.0.1::{p}")).collect();
    assert_eq!(published, expected);
    assert_eq!(regent["restart"], "on-failure", "a fenced node exits non-zero and comes back");
    let grace = regent["stop_grace_period"].as_str().and_then(|g| g.strip_suffix('s')).expect("a grace period");
    assert!(grace.parse::<u64>().unwrap() >= stop_budget_secs(&config), "stop_grace_period covers leave + drain");

    // The PostgreSQL container's variables are the ones the node uses.
    let pg = &services["postgres"]["environment"];
    for name in pg.as_object().unwrap().keys() {
        assert_known_var(name, "compose postgres");
    }
    assert_eq!(pg["POSTGRES_USER"], config.store.postgres.user.as_str());
    assert_eq!(pg["POSTGRES_DB"], config.store.postgres.database.as_str());
    assert_eq!(pg["POSTGRES_PASSWORD"], config.store.postgres.password.as_str());
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&deploy::deploy("Dockerfile"));
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(continued) = line.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        if let Some((instruction, rest)) = current.trim().split_once(' ') {
            instructions.push((instruction.to_uppercase(), rest.trim().to_string()));
        }
        current.clear();
    }
    instructions
}

#[test]
fn dockerfile_matches_the_node() {
    let instructions = dockerfile();
    let all = |name: &'static str| instructions.iter().filter(move |(i, _)| i == name).map(|(_, rest)| rest.as_str());

    // Stages: the prebuilt one before the Rust builder (the legacy builder builds every stage before its target),
    // the release runtime last (the default target).
    let stages: Vec<&str> = all("FROM").map(|f| f.rsplit(' ').next().unwrap()).collect();
    assert_eq!(stages, ["runtime-base", "runtime-prebuilt", "builder", "runtime"]);
    assert!(all("ARG").any(|a| a == "RUST_IMAGE=rust:1-bookworm"));
    assert!(all("ARG").any(|a| a == "RUNTIME_IMAGE=debian:bookworm-slim"));

    let mut env = BTreeMap::new();
    for line in all("ENV") {
        for pair in line.split_whitespace() {
            let (name, value) = pair.split_once('=').expect("ENV name=value");
            assert_known_var(name, "Dockerfile");
            env.insert(name.to_string(), value.to_string());
        }
    }
    let config = load_config(&env, "Dockerfile");
    let defaults = Config::default();
    assert_eq!(
        (config.server.port, config.cluster.port, config.admin.port),
        (defaults.server.port, defaults.cluster.port, defaults.admin.port)
    );
    assert_eq!((config.server.address.as_str(), config.admin.address.as_str()), ("0.0.0.0", "0.0.0.0"));
    let exposed: BTreeSet<u16> = all("EXPOSE").flat_map(|e| e.split_whitespace()).map(|p| p.parse().unwrap()).collect();
    assert_eq!(exposed, BTreeSet::from([config.server.port, config.cluster.port, config.admin.port]));

    let user = all("USER").next_back().expect("USER");
    assert!(!user.starts_with('0') && user != "root", "a non-root user, not {user}");
    assert_eq!(all("ENTRYPOINT").next_back(), Some(r#"["/usr/local/bin/regent"]"#));
    let cmd: Vec<String> = serde_json::from_str(all("CMD").next_back().unwrap()).unwrap();
    parse_args(&cmd, "Dockerfile CMD");
    let health = all("HEALTHCHECK").next().expect("a health check");
    assert!(health.contains("regent admin health --node \"127.0.0.1:${REGENT_ADMIN_PORT}\""), "{health}");
    assert_eq!(all("STOPSIGNAL").next(), Some("SIGTERM"));
}

#[test]
fn the_renderer_follows_helm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("templates")).unwrap();
    std::fs::write(dir.path().join("Chart.yaml"), "name: c\nversion: 1.0.0\nappVersion: \"2\"\n").unwrap();
    std::fs::write(dir.path().join("values.yaml"), "a: {b: 1}\nlist: [x, y]\nempty: \"\"\n").unwrap();
    std::fs::write(
        dir.path().join("templates/_h.tpl"),
        "{{- define \"h.name\" -}}\n{{ .Chart.Name }}-{{ .Release.Name }}\n{{- end -}}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("templates/t.yaml"),
        "name: {{ include \"h.name\" . }}\n\
         {{- if .Values.empty }}\nno: 1\n{{- else }}\nelse: {{ .Values.a.b | quote }}\n{{- end }}\n\
         {{- with .Values.a }}\nwith: {{ .b }}\n{{- end }}\n\
         items:\n{{- range .Values.list }}\n  - {{ . }}\n{{- end }}\n\
         map:\n  {{- toYaml .Values.a | nindent 2 }}\n\
         d: {{ default \"dflt\" .Values.empty }}\n\
         p: {{ printf \"%s-%d\" .Chart.AppVersion 3 | trunc 3 | trimSuffix \"-\" }}\n",
    )
    .unwrap();
    let rendered = deploy::helm::render(dir.path(), &json!({}), "r", "n").unwrap();
    assert_eq!(rendered[0].1, "name: c-r\nelse: \"1\"\nwith: 1\nitems:\n  - x\n  - y\nmap:\n  b: 1\nd: dflt\np: 2-3\n");
    std::fs::write(dir.path().join("templates/t.yaml"), "{{ lookup \"v1\" \"Pod\" \"\" \"\" }}\n").unwrap();
    let err = deploy::helm::render(dir.path(), &json!({}), "r", "n").unwrap_err();
    assert!(err.contains("lookup"), "an unsupported function is an error: {err}");
}
