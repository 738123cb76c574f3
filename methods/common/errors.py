"""The two kinds of error a model in `ovbench_methods` raises.

Models stay free of the harness, so they cannot raise its errors; instead every error a
method raises on purpose derives from one of these two plain bases, and an adapter (or any
other caller) translates by base type without knowing each method's classes:

- `MethodConfigError`: settings that do not describe a valid model, or inputs of the wrong
  shape for it (a `ValueError`).
- `WeightsError`: a weights or checkpoint file that cannot be read, is not available, or does
  not fit the model (a `RuntimeError`).

Messages are one line and name the setting or file concerned.
"""

from __future__ import annotations

__all__ = ["MethodConfigError", "WeightsError", "require_positive_ints"]


class MethodConfigError(ValueError):
    """Settings or inputs that do not describe a valid model."""


class WeightsError(RuntimeError):
    """A weights or checkpoint file that cannot be read, is unavailable, or does not fit."""


def require_positive_ints(settings: object, names: tuple[str, ...] | list[str], error: type[MethodConfigError] = MethodConfigError) -> None:
    """Each named attribute of `settings` is an int >= 1 (not a bool); else one `error` line naming it."""
    for name in names:
        value = getattr(settings, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise error(f"{name} must be a positive integer, got {value!r}")
