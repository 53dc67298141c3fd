"""The read-only web view (``/ui``): the task list and one task's page, server-rendered, no script.

A person signs in with an API token (:mod:`controller.api.ui.session`); the pages
show what the API shows, with the same repository rules and the same redaction,
and every value escaped (:mod:`controller.api.ui.pages`).
"""

from controller.api.ui.routes import router
from controller.api.ui.session import COOKIE_ACCESS, PUBLIC_PATHS

__all__ = ["COOKIE_ACCESS", "PUBLIC_PATHS", "router"]
