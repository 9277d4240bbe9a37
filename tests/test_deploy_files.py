"""deploy/: the deployments name real flows with valid parameters; the image, compose stack,
Kubernetes work pool and Salesforce metadata agree with them and with each other."""

from __future__ import annotations

import fnmatch
import importlib
import json
import re
import shlex
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from packaging.specifiers import SpecifierSet
from prefect.client.schemas.schedules import CronSchedule
from pydantic import BaseModel

from socialcrm.config import parse_settings

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prefect.yaml"
SPEC = yaml.safe_load(DEPLOY.read_text())


@pytest.mark.parametrize("deployment", SPEC["deployments"], ids=lambda d: d["name"])
def test_each_deployment_points_at_a_flow_with_valid_parameters(deployment: dict) -> None:
    path, _, name = deployment["entrypoint"].partition(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    flow = getattr(module, name)
    assert flow.name in deployment["name"]
    params = dict(deployment["parameters"]["params"])
    params["config"] = "socialcrm.yaml"  # the {{ $VAR }} is filled in at deploy time
    model = flow.parameters.properties["params"]
    assert model  # the flow takes one pydantic model: the UI renders it as a form
    annotation = flow.fn.__annotations__["params"]
    klass = getattr(module, annotation) if isinstance(annotation, str) else annotation
    assert issubclass(klass, BaseModel)
    klass.model_validate(params)
    for schedule in deployment["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert deployment["work_pool"]["name"] == "socialcrm-process"


def test_flow_forms_have_titles_and_descriptions() -> None:
    from flows.leads import leads

    schema = leads.parameters.model_dump()
    definitions = schema["definitions"]["LeadsRun"]["properties"]
    for field in ("config", "account", "dry_run", "limit", "since"):
        assert definitions[field].get("title") and definitions[field].get("description")


def test_a_misspelt_run_parameter_is_refused_by_the_model_and_the_form() -> None:
    from flows.erase import EraseRun
    from flows.leads import LeadsRun, leads
    from flows.replay import ReplayRun
    from flows.tickets import TicketsRun

    for model in (LeadsRun, TicketsRun, ReplayRun, EraseRun):
        with pytest.raises(ValueError, match="dryrun"):
            model.model_validate({"account": "brand", "dryrun": True})
    schema = leads.parameters.model_dump()["definitions"]["LeadsRun"]
    assert schema["additionalProperties"] is False  # Prefect's server-side check refuses it


def test_a_run_without_a_config_path_reads_the_one_the_worker_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`--param params='{...}'` replaces the deployment's whole params, config included."""
    from flows.leads import LeadsRun
    from flows.replay import ReplayRun

    monkeypatch.setenv("SOCIALCRM_CONFIG", "/etc/socialcrm/socialcrm.yaml")
    assert LeadsRun(account="brand").config == "/etc/socialcrm/socialcrm.yaml"
    assert LeadsRun.model_validate({"config": " "}).config == "/etc/socialcrm/socialcrm.yaml"
    assert LeadsRun(config="mine.yaml").config == "mine.yaml"
    monkeypatch.delenv("SOCIALCRM_CONFIG")
    assert LeadsRun().config == "socialcrm.yaml"
    assert ReplayRun(ids=[]).ids is None  # a list cleared in the form means all
    assert LeadsRun(sales_csv="out/New Leads.CSV").sales_csv == "out/New Leads.CSV"
    with pytest.raises(ValueError, match=r"must end in \.csv"):
        LeadsRun(sales_csv="/home/worker/.bashrc")
    assert ReplayRun(ids=[3]).ids == [3]


# --- scale-out files: image, compose stack, Kubernetes work pool --------------------------
# Static checks only: no Docker daemon, no cluster, no kubectl.

ROOT = DEPLOY.parents[1]
DEPLOY_DIR = ROOT / "deploy"
POOLS = {d["work_pool"]["name"] for d in SPEC["deployments"]}
ACCOUNTS = {d["parameters"]["params"]["account"] for d in SPEC["deployments"]}
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|PRIVATE_KEY|API_KEY|AUTH_STRING|CREDENTIAL")
# ${VAR}, ${VAR:?message}, ${VAR:-default}: a reference to the host's environment
COMPOSE_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?::?[-?][^}]*)?\}$")
CONFIG_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-[^}]*)?\}")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def _yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def _deploy_files(*suffixes: str) -> list[Path]:
    return sorted(p for p in DEPLOY_DIR.rglob("*") if p.is_file() and p.suffix in suffixes)


COMPOSE = _yaml_docs(DEPLOY_DIR / "compose.yaml")[0]
SERVICES: dict[str, Any] = COMPOSE["services"]
JOB_TEMPLATE = json.loads((DEPLOY_DIR / "k8s" / "base-job-template.json").read_text())
K8S_WORKER = _yaml_docs(DEPLOY_DIR / "k8s" / "worker.yaml")
K8S_SECRET = _yaml_docs(DEPLOY_DIR / "k8s" / "secret.example.yaml")[0]
COMPOSE_CONFIG_PATH = DEPLOY_DIR / "config" / "socialcrm.yaml"
INIT_SQL = (DEPLOY_DIR / "postgres-init.sql").read_text()


def _env(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # ["NAME=value", "PASSED_THROUGH"]
        pairs = [item.partition("=") for item in env]
        return {name: value if sep else None for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in env.items()}


def _command(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else " ".join(command)


def _volume(spec: str) -> tuple[str, str]:
    """``SOURCE:TARGET[:ro]`` -> (source, target); the source may be a ${VAR:-default}."""
    match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(?:ro|rw))?", spec)
    assert match, f"unexpected volume {spec!r}"
    return match.group(1), match.group(2)


def _image_name_and_tag(reference: str) -> tuple[str, str]:
    """``registry:5000/team/socialcrm:0.1`` -> (``socialcrm``, ``0.1``); ``${X:-a:b}`` -> a:b."""
    match = re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]+)\}", reference)
    reference = match.group(1) if match else reference
    path, _, tag = reference.rpartition(":")
    if "/" in tag or not path:
        path, tag = reference, "latest"
    return path.rsplit("/", 1)[-1], tag


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    text = (DEPLOY_DIR / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), " ".join(args.split())))
    return out


def _final_stage() -> list[tuple[str, str]]:
    steps = _dockerfile()
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    return steps[last_from:]


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, args in _final_stage():
        if instruction == "ENV":
            for pair in shlex.split(args):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def _dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path (or a parent folder) decides."""
    ignored = False
    for rule in rules:
        pattern = rule.removeprefix("!")
        parents = [path, *(str(p) for p in PurePosixPath(path).parents if str(p) != ".")]
        if any(fnmatch.fnmatch(candidate, pattern) for candidate in parents):
            ignored = not rule.startswith("!")
    return ignored


def _job_container() -> dict[str, Any]:
    return JOB_TEMPLATE["job_configuration"]["job_manifest"]["spec"]["template"]["spec"][
        "containers"
    ][0]


def _placeholders(value: Any) -> set[str]:
    return set(PLACEHOLDER.findall(json.dumps(value)))


def _kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.mark.parametrize(
    "path", _deploy_files(".yaml", ".yml", ".json"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_every_yaml_and_json_file_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert json.loads(path.read_text(encoding="utf-8"))
    else:
        assert _yaml_docs(path)


# compose --------------------------------------------------------------------------------


def test_compose_services_and_their_dependencies_are_consistent() -> None:
    assert set(SERVICES) == {"postgres", "prefect-server", "deploy", "worker"}
    for name, service in SERVICES.items():
        depends = service.get("depends_on") or {}
        for target, rule in depends.items():
            assert target in SERVICES, f"{name} depends on unknown service {target}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{target} has no healthcheck"
    assert SERVICES["prefect-server"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    worker_deps = SERVICES["worker"]["depends_on"]
    assert worker_deps["deploy"]["condition"] == "service_completed_successfully"
    assert SERVICES["deploy"]["restart"] == "no"


def test_prefect_server_matches_the_project_version_and_is_reached_by_name() -> None:
    server = SERVICES["prefect-server"]
    name, tag = _image_name_and_tag(server["image"])
    assert name == "prefect"
    assert tag.split("-")[0] == SPEC["prefect-version"]
    assert "4200:4200" in {str(port).rsplit(":", 2)[-2] + ":4200" for port in server["ports"]}
    assert "--port 4200" in _command(server)
    for client in ("deploy", "worker"):
        assert _env(SERVICES[client])["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_both_databases_live_on_the_postgres_service_and_are_created_by_the_init_script() -> None:
    server_url = sa.engine.make_url(
        _env(SERVICES["prefect-server"])["PREFECT_SERVER_DATABASE_CONNECTION_URL"] or ""
    )
    assert server_url.drivername == "postgresql+asyncpg"
    settings = parse_settings(
        yaml.safe_load(COMPOSE_CONFIG_PATH.read_text()),
        source=COMPOSE_CONFIG_PATH,
        base_dir=COMPOSE_CONFIG_PATH.parent,
    )
    state_url = sa.engine.make_url(settings.state_url())
    assert state_url.drivername == "postgresql+psycopg"
    assert state_url.password is None  # libpq takes it from PGPASSWORD
    for url in (server_url, state_url):
        assert url.host == "postgres" and (url.port or 5432) == 5432
        assert f"CREATE ROLE {url.username} LOGIN" in INIT_SQL
        assert f"CREATE DATABASE {url.database} OWNER {url.username};" in INIT_SQL
    assert server_url.database != state_url.database
    mounts = SERVICES["postgres"]["volumes"]
    assert any(
        _volume(m)[0] == "./postgres-init.sql"
        and _volume(m)[1].startswith("/docker-entrypoint-initdb.d/")
        for m in mounts
    )
    # passwords come from the container's environment, never from the script
    assert not re.search(r"PASSWORD\s+'", INIT_SQL)
    for variable in re.findall(r"\\getenv\s+\w+\s+(\w+)", INIT_SQL):
        assert variable in _env(SERVICES["postgres"])
    for client in ("deploy", "worker"):
        assert (
            _env(SERVICES[client])["PGPASSWORD"]
            == _env(SERVICES["postgres"])["SOCIALCRM_DB_PASSWORD"]
        )


def test_workers_poll_the_pool_the_deployments_declare() -> None:
    assert len(POOLS) == 1
    (pool,) = POOLS
    worker = _command(SERVICES["worker"])
    assert re.search(rf"prefect worker start --pool {pool} --type process\b", worker)
    deploy = _command(SERVICES["deploy"])
    assert f"prefect work-pool create {pool} --type process" in deploy
    assert "prefect --no-prompt deploy --all --prefect-file deploy/prefect.yaml" in deploy
    # the image's default command starts the same worker
    (cmd,) = [json.loads(args) for instruction, args in _final_stage() if instruction == "CMD"]
    assert " ".join(cmd) == f"prefect worker start --pool {pool} --type process"


def test_deploy_and_worker_see_the_project_and_config_where_the_deployments_say() -> None:
    workdir = [args for instruction, args in _final_stage() if instruction == "WORKDIR"][-1]
    for name in ("deploy", "worker"):
        service = SERVICES[name]
        env = _env(service)
        assert env["SOCIALCRM_HOME"] == workdir == _dockerfile_env()["SOCIALCRM_HOME"]
        config = PurePosixPath(env["SOCIALCRM_CONFIG"] or "")
        targets = {PurePosixPath(_volume(v)[1]) for v in service["volumes"]}
        assert config.parent in targets
        assert _image_name_and_tag(service["image"]) == _image_name_and_tag(
            SERVICES["worker"]["image"]
        )
        assert service["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    source = _volume(SERVICES["worker"]["volumes"][0])[0]
    assert re.fullmatch(r"\$\{SOCIALCRM_CONFIG_DIR:-\./config\}", source)
    assert (DEPLOY_DIR / "config" / PurePosixPath(env["SOCIALCRM_CONFIG"] or "").name).exists()


def test_compose_config_is_valid_and_its_secrets_reach_the_worker() -> None:
    data = yaml.safe_load(COMPOSE_CONFIG_PATH.read_text())
    settings = parse_settings(data, source=COMPOSE_CONFIG_PATH, base_dir=COMPOSE_CONFIG_PATH.parent)
    assert {account.name for account in settings.accounts} >= ACCOUNTS
    needed = set(CONFIG_REF.findall(COMPOSE_CONFIG_PATH.read_text()))
    assert needed, "the config refers to its secrets"
    assert needed <= set(_env(SERVICES["worker"]))


def test_compose_holds_no_literal_secret() -> None:
    for name, service in SERVICES.items():
        for variable, value in _env(service).items():
            if value is None:
                continue  # passed through from the host's environment when set there
            if SECRET_NAME.search(variable):
                assert COMPOSE_REF.match(value), f"{name}.{variable} must be a ${{...}} reference"
            if "://" in value:
                password = sa.engine.make_url(value).password if "@" in value else None
                if password is not None:
                    assert COMPOSE_REF.match(str(password)), f"{name}.{variable}: literal password"
    env_example = (DEPLOY_DIR / ".env.example").read_text()
    for line in env_example.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert line.rstrip().endswith("="), f".env.example must hold no value: {line!r}"


# Dockerfile -----------------------------------------------------------------------------


def test_dockerfile_builds_a_non_root_image_with_the_postgres_extra() -> None:
    steps = _dockerfile()
    froms = [args.split()[0] for instruction, args in steps if instruction == "FROM"]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert SpecifierSet(requires).contains("3.11")
    users = [args for instruction, args in _final_stage() if instruction == "USER"]
    assert users, "the final stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    installs = [
        args for instruction, args in steps if instruction == "RUN" and "pip install" in args
    ]
    assert any('".[postgres]"' in args or "'.[postgres]'" in args for args in installs)
    assert not any(re.search(r"\bdev\b|-e\s|--editable", args) for args in installs)
    env = _dockerfile_env()
    assert env["DO_NOT_TRACK"] == "1"
    assert env["PREFECT_HOME"].startswith("/home/")
    assert env["PREFECT_SERVER_UI_STATIC_DIRECTORY"].startswith(env["PREFECT_HOME"])
    assert not any(SECRET_NAME.search(name) for name in env)
    assert not any(instruction == "ARG" and SECRET_NAME.search(args) for instruction, args in steps)


def test_dockerfile_copies_what_the_package_and_the_deployments_need() -> None:
    copied: set[str] = set()
    for instruction, args in _final_stage():
        if instruction == "COPY" and not args.startswith("--from"):
            *sources, _ = shlex.split(args)
            copied.update(s.rstrip("/") for s in sources)
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    assert {"pyproject.toml", "README.md", "deploy/prefect.yaml", "mappings"} <= copied
    for package in ("socialcrm", "flows", "connectors", "mappings"):
        assert package in copied
    for deployment in SPEC["deployments"]:
        entry = deployment["entrypoint"].partition(":")[0]
        assert entry.split("/")[0] in copied
    # .dockerignore keeps the context small without hiding what the Dockerfile copies
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".git", ".venv", "**/.env"):
        assert must in rules
    for source in copied:
        assert not _dockerignored(source, rules), f".dockerignore hides {source}"


# Kubernetes work pool -------------------------------------------------------------------


def test_base_job_template_has_the_work_pool_schema() -> None:
    assert set(JOB_TEMPLATE) == {"job_configuration", "variables"}
    variables = JOB_TEMPLATE["variables"]
    assert variables["type"] == "object"
    properties = variables["properties"]
    used = _placeholders(JOB_TEMPLATE["job_configuration"])
    assert used <= set(properties), f"undeclared: {used - set(properties)}"
    # Prefect passes a variable on only when job_configuration references it
    assert set(properties) <= used, f"never used: {set(properties) - used}"
    for needed in ("image", "namespace", "finished_job_ttl", "secret_name"):
        assert "default" in properties[needed]
    assert "finished_job_ttl" in used and "image" in used


def test_base_job_template_renders_with_its_defaults() -> None:
    from prefect.utilities.templating import apply_values

    defaults = {
        name: spec["default"]
        for name, spec in JOB_TEMPLATE["variables"]["properties"].items()
        if "default" in spec
    }
    rendered = apply_values(JOB_TEMPLATE["job_configuration"], defaults)
    manifest = rendered["job_manifest"]
    assert "{{" not in json.dumps(manifest)
    assert isinstance(manifest["spec"]["ttlSecondsAfterFinished"], int)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    uid = [args for instruction, args in _final_stage() if instruction == "USER"][-1]
    assert str(pod["securityContext"]["runAsUser"]) == uid.split(":")[0]
    # the same image compose builds (name and tag), pushed to a registry
    assert _image_name_and_tag(container["image"]) == _image_name_and_tag(
        SERVICES["worker"]["image"]
    )
    # the config arrives from a ConfigMap where the image expects it
    config_dir = str(PurePosixPath(_dockerfile_env()["SOCIALCRM_CONFIG"]).parent)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert mounts[config_volume["name"]] == config_dir
    assert mounts.get("home", "") == str(PurePosixPath(_dockerfile_env()["PREFECT_HOME"]).parent)
    # names that must exist in the cluster: the namespace and service account of worker.yaml
    (namespace,) = _kinds(K8S_WORKER, "Namespace")
    assert manifest["metadata"]["namespace"] == namespace["metadata"]["name"]
    accounts = {sa_["metadata"]["name"] for sa_ in _kinds(K8S_WORKER, "ServiceAccount")}
    assert pod["serviceAccountName"] in accounts


def test_flow_run_pods_take_their_secrets_from_the_secret() -> None:
    container = _job_container()
    env = {item["name"]: item for item in container["env"]}
    secret_keys = set(K8S_SECRET["stringData"])
    default_secret = JOB_TEMPLATE["variables"]["properties"]["secret_name"]["default"]
    assert K8S_SECRET["metadata"]["name"] == default_secret
    for name, item in env.items():
        if SECRET_NAME.search(name):
            assert "value" not in item, f"{name}: literal value in the job template"
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "{{ secret_name }}"
            assert ref["key"] in secret_keys
    # every ${VAR} the config uses, and the state store's password, reach the pod
    needed = set(CONFIG_REF.findall(COMPOSE_CONFIG_PATH.read_text())) | {"PGPASSWORD"}
    assert needed <= set(env)
    # Prefect prepends its own env (PREFECT_API_URL, job variables) only when this is a list
    assert isinstance(container["env"], list)
    assert JOB_TEMPLATE["job_configuration"]["env"] == "{{ env }}"


def test_kubernetes_worker_has_the_rights_to_run_jobs_and_polls_its_pool() -> None:
    kinds = {doc["kind"] for doc in K8S_WORKER}
    assert kinds == {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Deployment"}
    (namespace,) = _kinds(K8S_WORKER, "Namespace")
    for doc in K8S_WORKER:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace["metadata"]["name"]
    (deployment,) = _kinds(K8S_WORKER, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = " ".join(container["args"])
    assert "prefect worker start --pool socialcrm-k8s --type kubernetes" in args
    name, tag = _image_name_and_tag(container["image"])
    assert name == "prefect" and tag.startswith(SPEC["prefect-version"] + "-")
    assert tag.endswith("-kubernetes")  # the image variant that ships prefect-kubernetes
    for item in container["env"]:
        if SECRET_NAME.search(item["name"]):
            assert "secretKeyRef" in item["valueFrom"]
    (binding,) = _kinds(K8S_WORKER, "RoleBinding")
    (role,) = _kinds(K8S_WORKER, "Role")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"]}.items() <= binding[
        "subjects"
    ][0].items()
    grants = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    needed = {("batch", "jobs", v) for v in ("create", "get", "list", "watch", "delete")}
    needed |= {("", "pods", v) for v in ("get", "list", "watch")} | {("", "pods/log", "get")}
    assert needed <= grants
    readme = (ROOT / "README.md").read_text()
    assert (
        "prefect work-pool create socialcrm-k8s --type kubernetes "
        "--base-job-template deploy/k8s/base-job-template.json"
    ) in readme


def test_secret_example_holds_placeholders_only() -> None:
    assert K8S_SECRET["kind"] == "Secret"
    assert "data" not in K8S_SECRET
    for key, value in K8S_SECRET["stringData"].items():
        assert re.fullmatch(r"<[a-z0-9:-]+>", value), f"{key}: not a placeholder"


def test_scale_out_readme_names_files_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    for path in set(re.findall(r"\bdeploy/[\w./-]*\w", readme)) - {"deploy/.env"}:
        assert (ROOT / path).exists(), f"README.md names missing {path}"


# Salesforce metadata --------------------------------------------------------------------

SF_DIR = DEPLOY_DIR / "salesforce"
SF_SOURCE = SF_DIR / "force-app" / "main" / "default"
MD = "{http://soap.sforce.com/2006/04/metadata}"
# describe type (what the sandbox and the mapping check read) -> metadata type
METADATA_TYPES = {
    "string": "Text",
    "url": "Url",
    "picklist": "Picklist",
    "double": "Number",
    "datetime": "DateTime",
    "date": "Date",
    "boolean": "Checkbox",
    "email": "Email",
    "phone": "Phone",
    "textarea": "TextArea",
}


def _xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(MD + tag)
    return None if child is None else (child.text or "")


# Custom fields of Tasks (and Events) are defined once, on Salesforce's Activity object.
METADATA_OBJECT = {"Task": "Activity", "Event": "Activity"}


def _field_files() -> dict[str, Path]:
    """Field metadata by sandbox object name (Activity fields listed under Task)."""
    found: dict[str, Path] = {}
    for p in SF_SOURCE.glob("objects/*/fields/*.field-meta.xml"):
        name = p.name.removesuffix(".field-meta.xml")
        folder = p.parent.parent.name
        objects = [o for o, m in METADATA_OBJECT.items() if m == folder and o == "Task"] or [folder]
        for obj in objects:
            found[f"{obj}.{name}"] = p
    return found


def _permission_set() -> ET.Element:
    return _xml(SF_SOURCE / "permissionsets" / "Socialcrm_Integration.permissionset-meta.xml")


@pytest.mark.parametrize(
    "path", sorted(SF_DIR.rglob("*.xml")), ids=lambda p: str(p.relative_to(SF_DIR))
)
def test_salesforce_metadata_is_well_formed(path: Path) -> None:
    root = _xml(path)
    assert root.tag.startswith(MD), f"{path.name}: not in the metadata namespace"
    if root.tag == MD + "CustomField":
        assert _text(root, "fullName") == path.name.removesuffix(".field-meta.xml")
        assert _text(root, "label") and _text(root, "type") and _text(root, "description")


def test_sfdx_project_points_at_the_source_and_the_api_version_we_call() -> None:
    from socialcrm.config import SalesforceSettings

    project = json.loads((SF_DIR / "sfdx-project.json").read_text())
    for directory in project["packageDirectories"]:
        assert (SF_DIR / directory["path"]).is_dir()
    assert project["sourceApiVersion"] == SalesforceSettings.model_fields["api_version"].default


def test_every_custom_field_the_lead_mapping_writes_has_matching_metadata() -> None:
    from sandbox.sf_schema import OBJECTS

    mapping = yaml.safe_load((ROOT / "mappings" / "lead.salesforce.yaml").read_text())
    sobject = OBJECTS[mapping["object"]]
    files = _field_files()
    targets = [name for name in mapping["fields"] if name.endswith("__c")]
    assert mapping["external_id"] in targets
    for name in targets:
        key = f"{mapping['object']}.{name}"
        assert key in files, f"no metadata for {key}"
        meta = _xml(files[key])
        described = sobject.field(name)
        assert described is not None, f"the sandbox's {mapping['object']} has no {name}"
        assert _text(meta, "type") == METADATA_TYPES[described.type], name
        if described.type == "string":
            assert int(_text(meta, "length") or 0) == described.length, name
        if described.type == "double":
            assert int(_text(meta, "precision") or 0) == described.precision, name
            assert int(_text(meta, "scale") or 0) == described.scale, name
        assert (_text(meta, "externalId") == "true") == described.external_id, name
        assert (_text(meta, "unique") == "true") == described.unique, name
        if described.type == "picklist":
            values = [
                _text(v, "fullName")
                for v in meta.iter(MD + "value")
                if v.find(MD + "fullName") is not None
            ]
            assert values == list(described.picklist), name
            restricted = meta.find(f"{MD}valueSet/{MD}restricted")
            assert (restricted is not None and restricted.text == "true") == described.restricted
            # every value the mapping's lookups produce is allowed
            for spec in [mapping["fields"][name]]:
                for transform in spec.get("transforms", []):
                    if isinstance(transform, dict) and "lookup" in transform:
                        table = mapping["lookups"][transform["lookup"]]
                        assert set(table.values()) <= set(values), name
    external = _xml(files[f"{mapping['object']}.{mapping['external_id']}"])
    assert _text(external, "externalId") == "true" and _text(external, "unique") == "true"


def test_every_sandbox_custom_field_has_metadata() -> None:
    from sandbox.sf_schema import OBJECTS

    files = _field_files()
    for sobject in OBJECTS.values():
        for field in sobject.fields:
            if field.custom:
                key = f"{sobject.name}.{field.name}"
                assert key in files, f"the sandbox describes {key}; deploy/salesforce lacks it"
                assert _text(_xml(files[key]), "type") == METADATA_TYPES[field.type], key


def test_permission_set_grants_every_socialcrm_field_and_the_lead_object() -> None:
    permission_set = _permission_set()
    granted = {}
    for item in permission_set.iter(MD + "fieldPermissions"):
        granted[_text(item, "field")] = (_text(item, "readable"), _text(item, "editable"))
    files = _field_files()
    shipped = {
        f"{METADATA_OBJECT.get(key.split('.')[0], key.split('.')[0])}.{key.split('.')[1]}"
        for key in files
    }
    assert set(granted) == shipped, "one permission per shipped field, none dangling"
    assert all(value == ("true", "true") for value in granted.values())
    objects = {
        _text(item, "object"): item for item in permission_set.iter(MD + "objectPermissions")
    }
    lead = objects["Lead"]
    for permission in ("allowCreate", "allowEdit", "allowRead"):
        assert _text(lead, permission) == "true"
    readme = (ROOT / "README.md").read_text()
    assert "sf project deploy start --source-dir force-app --target-org" in readme
    assert "sf org assign permset --name Socialcrm_Integration" in readme


def test_files_holding_secrets_are_never_committed() -> None:
    """The README says never to commit them: git ignores them (their examples are kept)."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    secret = ["deploy/.env", "socialcrm.yaml", "socialcrm.deploy.yaml", "deploy/config/sf.key"]
    kept = ["deploy/.env.example", "socialcrm.example.yaml"]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *secret, *kept],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert ignored == secret
