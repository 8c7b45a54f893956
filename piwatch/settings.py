"""Runtime settings for PiWatch, read from PIWATCH_* environment variables.

On the router they come from /etc/ceil/piwatch.env (written from cluster.yaml at bake time), so
the one place that knows the LAN address stays cluster.yaml.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PIWATCH_", extra="ignore", frozen=True)

    # Loopback by default: binding to every interface would expose PiWatch on the uplink.
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    # Host names PiWatch answers to, comma-separated (piwatch.guard); the router adds its address
    # and names. A plain string: systemd's EnvironmentFile would strip the quotes of a JSON list.
    allowed_hosts: str = Field(default="127.0.0.1,localhost,::1", pattern=r"^[A-Za-z0-9.:,_-]+$")

    @property
    def allowed_host_names(self) -> list[str]:
        return [h for h in self.allowed_hosts.split(",") if h]
    reactions_file: Path | None = Field(
        default=None, description="YAML or JSON reactions file; None uses the built-in defaults."
    )
    # The token every route that changes something needs (`Authorization: Bearer`; kubewatch's
    # webhook URL carries it as `?token=`). On the router systemd hands it over (LoadCredential
    # webhook-token); None and no credential: no route needs one, allowed on loopback only.
    webhook_token_file: Path | None = None

    def webhook_token(self) -> str | None:
        import os

        path = self.webhook_token_file
        if path is None and os.environ.get("CREDENTIALS_DIRECTORY"):
            candidate = Path(os.environ["CREDENTIALS_DIRECTORY"]) / "webhook-token"
            path = candidate if candidate.is_file() else None
        return path.read_text().strip() if path else None
    mock_pins: bool = Field(
        default=False, description="Force gpiozero's mock pins even when GPIO hardware exists."
    )
    # The PiTraffic button pulls the pin low when pressed (internal pull-up).
    button_pull_up: bool = True

    # Events arriving within this window of the first one are shown as one animation.
    coalesce_seconds: float = Field(default=0.5, ge=0)
    # At most one animation per interval; events arriving meanwhile are coalesced into the next.
    min_interval_seconds: float = Field(default=1.0, ge=0)
    blink_seconds: float = Field(default=0.25, gt=0, description="Half period of a blink.")
    blink_count: int = Field(default=3, ge=1)
    # Caps the alarm beeping so an unattended alarm does not buzz forever.
    alarm_buzz_seconds: float = Field(default=30.0, ge=0)
    queue_size: int = Field(default=256, ge=1)
    history_size: int = Field(default=50, ge=1)
    log_level: str = "info"
