"""Hook points, hook sessions, activation caches and ready-made interventions."""

from mechscope.hooks.cache import ActivationCache
from mechscope.hooks.points import HookCatalogue, HookPoint
from mechscope.hooks.session import HookFn, HookSession

__all__ = ["ActivationCache", "HookCatalogue", "HookFn", "HookPoint", "HookSession"]
