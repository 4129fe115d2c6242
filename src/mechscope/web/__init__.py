"""``mechscope serve``: a local web app over the results store, behind loopback-only binding, a
session token, a Host allowlist, an Origin check and a strict Content-Security-Policy."""

from mechscope.web.app import artifact_file, create_app
from mechscope.web.security import Guard, GuardMiddleware, check_bind

__all__ = ["Guard", "GuardMiddleware", "artifact_file", "check_bind", "create_app"]
