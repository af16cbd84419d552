"""pytest plugin (entry point ``vastai_async``): fixtures on the sandbox for your own tests.

Fixtures are added as the sandbox lands; importing this module must stay cheap and safe.
"""

from __future__ import annotations
