"""Controller settings, from the environment (``TASKBOX_*``) or a ``.env`` file.

No secret has a default here; settings that guard access refuse placeholders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]

MIN_TOKEN_LENGTH = 16
_PLACEHOLDERS = {"", "changeme", "change-me", "secret", "token", "placeholder", "xxx", "todo"}


class Settings(BaseSettings):
    """Every knob of the controller; each field documents itself."""

    model_config = SettingsConfigDict(
        hide_input_in_errors=True,  # a bad value may be a token: never echo it
        env_prefix="TASKBOX_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        use_attribute_docstrings=True,
    )

    policies_dir: Path = PROJECT_ROOT / "policies"
    """Folder of policy YAML files."""
    runs_dir: Path = PROJECT_ROOT / "var" / "runs"
    """Where every run's folder (staging and record) lives."""
    image: str = "taskbox-sandbox:latest"
    """The sandbox image tag built by ``taskbox image build``."""
    keep_staging: bool = False
    """Keep each run's staging folder after the run (for debugging)."""
    anthropic_api_key: SecretStr | None = None
    """The real model API key; used only by the gateway, never passed to a sandbox."""
    model_upstream: str = "anthropic"
    """Where the gateway sends model requests: ``anthropic``, ``scripted:FILE`` or ``replay:RUN_DIR``."""
    anthropic_base_url: str = "https://api.anthropic.com"
    """Upstream of the ``anthropic`` gateway upstream."""
    sandbox_backend: Literal["docker", "kubernetes"] = "docker"
    """The engine sandboxes run on (``controller.sandbox.engines.open_engine``): ``docker``
    (one host) or ``kubernetes`` (one Pod per sandbox, the ``kubernetes_*`` settings)."""
    docker_host: str | None = None
    """Engine address; the docker SDK's default (``DOCKER_HOST`` or the local socket) when unset."""
    kubernetes_namespace: str = Field(
        default="taskbox", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
    )
    """The namespace every sandbox Pod and NetworkPolicy is made in (it should enforce Pod
    Security ``restricted`` and hold nothing else: preflight checks the label)."""
    kubernetes_kubeconfig: Path | None = None
    """The kubeconfig file; unset: in-cluster service-account configuration when the controller
    runs in a Pod, else ``KUBECONFIG`` or ``~/.kube/config``."""
    kubernetes_context: str | None = None
    """The kubeconfig context to use; its current context when unset."""
    kubernetes_image: str | None = None
    """The sandbox image reference the cluster pulls (a registry reference, best pinned by
    digest: ``registry.example/taskbox-sandbox@sha256:...``); required with ``kubernetes``."""
    kubernetes_exchange_host: str = "127.0.0.1"
    """Where the controller's file exchange binds (set an address Pods can reach)."""
    kubernetes_exchange_port: int = Field(default=8765, ge=0, le=65535)
    """The exchange's port (0 picks a free one: tests only)."""
    kubernetes_exchange_url: str | None = None
    """The exchange's base URL as Pods dial it, ``http://HOST:PORT`` (an IP address: the Pods
    have no DNS unless ``kubernetes_dns``); required with ``kubernetes``."""
    kubernetes_exchange_max_out_bytes: int = Field(default=128 * 2**20, ge=1024, le=2**33)
    """The largest ``out.tar`` a Pod may upload; a larger one is cut and refused (413)."""
    kubernetes_gateway_port: int = Field(default=8766, ge=1, le=65535)
    """The TCP port of the model gateway as the agent's Pod reaches it (the only egress
    its NetworkPolicy allows besides the exchange)."""
    kubernetes_controller_selector: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "taskbox-controller"}
    )
    """Labels of the controller's Pods (``key=value,key2=value2``): the NetworkPolicy's only
    egress destination (gateway and exchange)."""
    kubernetes_controller_namespace: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
    )
    """The namespace of the controller's Pods (for the NetworkPolicy); the sandboxes' when unset."""
    kubernetes_controller_cidrs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Address blocks of a controller outside the cluster (``172.18.0.1/32,...``), reachable
    on the exchange and gateway ports only."""
    kubernetes_dns: bool = False
    """Let Pods query the cluster DNS (only for an exchange URL with a host name: a Pod that
    may look names up has a channel out)."""
    kubernetes_user_namespaces: bool = True
    """Give each Pod its own user namespace (``hostUsers: false``); turn off only on a cluster
    that cannot (Linux 6.3+ and a runtime with id-mapped mounts are needed)."""
    kubernetes_runtime_class: str | None = Field(
        default=None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
    )
    """The RuntimeClass every sandbox Pod runs under (``gvisor``, ``kata``); the cluster's
    default runtime when unset. Preflight checks it exists."""
    api_tokens: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    """Bearer tokens of the API: ``TOKEN=repo1,repo2;TOKEN2=*`` (``*`` allows every repository)."""
    repositories: Annotated[dict[str, Path], NoDecode] = Field(default_factory=dict)
    """Repositories by name: ``name=/path;other=/path``. Callers only ever pass names."""
    max_concurrent_tasks: int = Field(default=2, ge=1, le=64)
    """Tasks running at once; the rest wait in order."""
    database: Path = PROJECT_ROOT / "var" / "taskbox.sqlite3"
    """SQLite file of the task index."""
    max_queued_tasks: int = Field(default=1000, ge=1, le=1_000_000)
    """Tasks that may wait in the queue; a submission beyond it gets 503 ``queue_full``."""
    shutdown_grace_seconds: float = Field(default=60.0, ge=0, le=86_400)
    """On SIGTERM, how long running tasks may go on before they are cancelled and re-queued."""
    max_request_bytes: int = Field(default=4 * 2**20, ge=1024, le=2**30)
    """Largest request body the API reads; a larger one gets 413 ``request_too_large``."""
    executor_module: str = Field(
        default="controller.runs", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
    )
    """Module whose ``make_executor(settings)`` (and optional ``make_readiness_probes(settings)``)
    ``taskbox serve`` uses. Only tests point it elsewhere (at a fake executor)."""

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            parsed: dict[str, list[str]] = {}
            for item in filter(None, (part.strip() for part in value.split(";"))):
                token, _, repos = item.partition("=")
                parsed[token.strip()] = [r.strip() for r in repos.split(",") if r.strip()] or ["*"]
            value = parsed
        if isinstance(value, dict):
            for token in value:
                if (
                    str(token).strip().lower() in _PLACEHOLDERS
                    or len(str(token)) < MIN_TOKEN_LENGTH
                ):
                    raise ValueError(
                        "an API token is a placeholder or shorter than 16 characters; "
                        "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                    )
        return value

    @field_validator("kubernetes_controller_selector", mode="before")
    @classmethod
    def _parse_selector(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = (item.partition("=") for item in value.split(",") if item.strip())
            return {key.strip(): label.strip() for key, _, label in pairs}
        return value

    @field_validator("kubernetes_controller_cidrs", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("repositories", mode="before")
    @classmethod
    def _parse_repositories(cls, value: object) -> object:
        if isinstance(value, str):
            pairs = (item.partition("=") for item in value.split(";") if item.strip())
            return {name.strip(): Path(path.strip()) for name, _, path in pairs}
        return value


def get_settings() -> Settings:
    """Settings as the environment gives them now."""
    return Settings()
