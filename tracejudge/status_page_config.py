"""The status page's config, `status_page:` in tracejudge.yaml (README "Configuration reference").

Apart from tracejudge/status_page.py so that the config file's model (tracejudge/config_file.py) reads it
without importing the page, which serves the control plane's access rule.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator

from tracejudge.config import StrictConfig

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_LINK_FIELDS = ("trace_id", "span_id")


class StatusPageConfig(StrictConfig):
    enabled: bool = True  # serve `/` and /api/* on the admin listener (telemetry.prometheus_endpoint)
    # Where a trace id links to, e.g. Jaeger's http://jaeger:16686/trace/{trace_id}; {span_id} may be used too.
    trace_url: str | None = None
    recent_verdicts: int = Field(default=200, ge=1, le=10_000)  # verdicts kept in memory for the page and tail

    @field_validator("trace_url")
    @classmethod
    def _valid_trace_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"status_page.trace_url must be an http:// or https:// URL, got {value!r}")
        names = _PLACEHOLDER.findall(value)
        unknown = sorted(set(names) - set(_LINK_FIELDS))
        if unknown:
            raise ValueError(f"status_page.trace_url may use {{trace_id}} and {{span_id}}, not {unknown}")
        if "trace_id" not in names:
            raise ValueError(f"status_page.trace_url needs a {{trace_id}} placeholder (/trace/{{trace_id}}): {value!r}")
        return value


def trace_link(template: str | None, trace_id: str | None, span_id: str | None = None) -> str | None:
    """The backend URL for a verdict's trace, the ids percent-encoded into the template; None without either."""
    if not template or not trace_id:
        return None
    return template.replace("{trace_id}", quote(trace_id, safe="")).replace("{span_id}", quote(span_id or "", safe=""))
