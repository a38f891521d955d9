"""Shared test helpers: bounded waiting (process cleanup lives in conftest)."""

from tests.helpers.eventually import async_eventually, eventually

__all__ = ["async_eventually", "eventually"]
