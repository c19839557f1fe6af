"""``AlphaMonitorCallback``: alpha and mask-ratio statistics of AlphaAdam-family optimizers in the Trainer's logs.

Log keys (one set per parameter group, the group named by its ``name`` entry, e.g. ``decay`` / ``no_decay`` with
``optim="alphaadam"``, or ``group0``, ``group1``, ... otherwise)::

    alpha/<group>/mean    mean over the group's tensors of the per-tensor alpha of the last optimizer step
    alpha/<group>/min     smallest per-tensor alpha in the group
    alpha/<group>/max     largest per-tensor alpha in the group
    mask_ratio/<group>    mean over the group's tensors of sum(phi) / numel (the fraction of coordinates updated)
    nonfinite/<group>     how many of the group's tensors hold NaN / Inf after the step (a non-finite update)

NaN and Inf values are logged as they are (a NaN alpha makes its group's mean / min / max NaN), and the first log
with a non-finite value or a non-zero ``nonfinite/<group>`` also logs one warning. Tensors with no elements are
left out.

and with ``per_tensor=True`` also, for every parameter tensor (named by its parameter name, e.g.
``model.layers.0.self_attn.q_proj.weight``)::

    alpha_tensor/<parameter name>
    mask_ratio_tensor/<parameter name>

The per-tensor keys use their own prefixes so that TensorBoard shows them in sections of their own and a filter on
``alpha/`` sees only the group summaries. The reporting integrations add their own prefix (TensorBoard writes
``train/alpha/decay/mean``); :mod:`hf_alphaadam.trainer.plotting` reads both spellings.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import CallbackHandler

logger = logging.getLogger(__name__)

__all__ = ["AlphaMonitorCallback", "attach_to_calling_trainer", "find_statistics_optimizer", "ALPHA_PREFIX",
           "MASK_RATIO_PREFIX", "ALPHA_TENSOR_PREFIX", "MASK_RATIO_TENSOR_PREFIX", "MONITOR_ENVIRONMENT_VARIABLE",
           "NONFINITE_PREFIX"]

ALPHA_PREFIX = "alpha/"
MASK_RATIO_PREFIX = "mask_ratio/"
ALPHA_TENSOR_PREFIX = "alpha_tensor/"
MASK_RATIO_TENSOR_PREFIX = "mask_ratio_tensor/"
NONFINITE_PREFIX = "nonfinite/"

# How many ``.optimizer`` links to follow at most (Trainer -> AcceleratedOptimizer -> DeepSpeed wrapper -> ...).
_MAX_WRAPPER_DEPTH = 8


def find_statistics_optimizer(optimizer: Any) -> Any | None:
    """The object with a ``statistics()`` method found by following ``.optimizer`` from ``optimizer``, or None.

    This unwraps accelerate's ``AcceleratedOptimizer``, DeepSpeed's optimizer wrappers and engines, and any other
    wrapper that keeps the wrapped optimizer in an ``optimizer`` attribute.
    """
    seen: set[int] = set()
    current = optimizer
    for _ in range(_MAX_WRAPPER_DEPTH + 1):
        if current is None or id(current) in seen:
            return None
        if callable(getattr(current, "statistics", None)):
            return current
        seen.add(id(current))
        current = getattr(current, "optimizer", None)
    return None


def _describe_chain(optimizer: Any) -> str:
    """``"AcceleratedOptimizer -> AdamW"``: the types met following ``.optimizer``, for messages."""
    names, seen, current = [], set(), optimizer
    while current is not None and id(current) not in seen and len(names) <= _MAX_WRAPPER_DEPTH:
        seen.add(id(current))
        names.append(type(current).__name__)
        current = getattr(current, "optimizer", None)
    return " -> ".join(names)


def statistics_to_logs(statistics: dict[str, dict[str, Any]], per_tensor: bool = False) -> dict[str, float]:
    """Turn ``optimizer.statistics()`` into flat log entries named as in the module docstring."""
    logs: dict[str, float] = {}
    for group, values in statistics.get("groups", {}).items():
        logs[f"{ALPHA_PREFIX}{group}/mean"] = float(values["alpha_mean"])
        logs[f"{ALPHA_PREFIX}{group}/min"] = float(values["alpha_min"])
        logs[f"{ALPHA_PREFIX}{group}/max"] = float(values["alpha_max"])
        logs[f"{MASK_RATIO_PREFIX}{group}"] = float(values["mask_ratio"])
        if "nonfinite_tensors" in values:
            logs[f"{NONFINITE_PREFIX}{group}"] = int(values["nonfinite_tensors"])
    if per_tensor:
        for name, values in statistics.get("tensors", {}).items():
            logs[f"{ALPHA_TENSOR_PREFIX}{name}"] = float(values["alpha"])
            logs[f"{MASK_RATIO_TENSOR_PREFIX}{name}"] = float(values["mask_ratio"])
    return logs


def _move_to_front(callbacks: list[Any], callback: Any) -> None:
    """Make ``callback`` the first entry of ``callbacks`` (inserting it if absent).

    Safe while the list is being iterated and ``callback`` is the current element: the entries between the new and
    the old position have already been visited and the ones after it keep their places.
    """
    if callbacks and callbacks[0] is callback:
        return
    if any(cb is callback for cb in callbacks):
        callbacks.remove(callback)
    callbacks.insert(0, callback)


class AlphaMonitorCallback(TrainerCallback):
    """Adds per-group alpha (mean / min / max) and mask ratio (and optionally per-tensor values) to training logs.

    Works with any optimizer that has a ``statistics(per_tensor=...)`` method (AlphaAdam and the other optimizers
    of this package), reached through the Trainer's wrappers by following ``.optimizer``. The key names are listed
    in the module docstring (``alpha/<group>/mean``, ``alpha/<group>/min``, ``alpha/<group>/max``,
    ``mask_ratio/<group>``; ``alpha_tensor/<name>``, ``mask_ratio_tensor/<name>`` with ``per_tensor=True``).

    When values are added: to a log that contains ``"loss"`` (the Trainer's training log) and only if the global
    step advanced since the last log that got values. Evaluation logs, the end-of-training summary and a second
    log at the same step therefore get none, so a value is never repeated for an optimizer step it does not
    describe. ``optimizer.statistics()`` is called once per such log and at no other time: the statistics stay on
    the device between logging steps. Without a ``statistics()`` method (e.g. ``optim="adamw_torch"``) the
    callback logs one warning and adds nothing.

    Reaching the reporting integrations: the Trainer copies ``logs`` into ``state.log_history`` *before* calling
    ``on_log``, and calls the callbacks in list order, with user callbacks after the reporting ones
    (TensorBoard, W&B, ...). So that the values reach all of them:

    - in ``on_log`` the callback adds its keys both to ``logs`` (seen by every callback after it) and to the
      ``state.log_history`` entry just written for that log;
    - a Trainer that creates one of the package's optimizers gets one by itself, first in its list, unless it
      already has one (:func:`attach_to_calling_trainer`; ``HF_ALPHAADAM_MONITOR=0`` turns that off);
    - it must come first in the callback list. ``Trainer(callbacks=[AlphaMonitorCallback()])`` and
      ``trainer.add_callback(...)`` both work: at ``on_train_begin`` the callback finds the ``CallbackHandler``
      that is calling it (the caller's frame, since callbacks are not handed the handler) and moves itself to the
      front of its list. ``AlphaMonitorCallback().install(trainer)`` does the same explicitly, before training;
      if the automatic move ever fails, the callback warns and suggests it.

    Args:
        per_tensor: also log alpha and the mask ratio of every parameter tensor, keyed by parameter name
            (one key pair per tensor: for large models this makes each log line long).

    Example::

        args = TrainingArguments(..., optim="alphaadam", logging_steps=10, report_to=["tensorboard"])
        trainer = Trainer(model, args, train_dataset=data, callbacks=[AlphaMonitorCallback()])
        trainer.train()
        hf_alphaadam.plot_alpha(trainer.state.log_history, "alpha.png")
    """

    def __init__(self, per_tensor: bool = False) -> None:
        self.per_tensor = per_tensor
        self._warned_no_statistics = False
        self._warned_nonfinite = False
        self._last_logged_step = -1
        self._installed = False  # set by install(): the automatic move is then not needed

    def install(self, trainer: Any) -> "AlphaMonitorCallback":
        """Put this callback first in ``trainer``'s callbacks (adding it if absent, replacing any other
        AlphaMonitorCallback) so that its keys reach every reporting integration. Returns the callback."""
        callbacks = trainer.callback_handler.callbacks
        for other in [cb for cb in callbacks if isinstance(cb, AlphaMonitorCallback) and cb is not self]:
            logger.info("AlphaMonitorCallback.install: replacing the AlphaMonitorCallback already in the trainer")
            callbacks.remove(other)
        _move_to_front(callbacks, self)
        self._installed = True
        return self

    # -- Trainer events ---------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self._last_logged_step = -1
        self._move_ahead_of_reporting_callbacks(state)
        self._statistics_optimizer(optimizer, state)  # warns now, at the start, if there is nothing to monitor

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs):
        if logs is None or "loss" not in logs or state.global_step <= self._last_logged_step:
            return
        source = self._statistics_optimizer(optimizer, state)
        if source is None:
            return
        new_logs = statistics_to_logs(source.statistics(per_tensor=self.per_tensor), self.per_tensor)
        if not new_logs:  # the optimizer has not stepped yet (e.g. right after loading a checkpoint)
            return
        self._last_logged_step = state.global_step
        self._warn_once_if_nonfinite(new_logs, state)
        # Trainer.log appended {**logs, "step": global_step} just before calling on_log: that is this log's entry.
        entry = state.log_history[-1] if state.log_history else None
        if entry is not None and entry.get("step") == state.global_step and all(key in entry for key in logs):
            entry.update(new_logs)
        else:
            logger.debug("AlphaMonitorCallback: no log_history entry for the log at step %d", state.global_step)
        logs.update(new_logs)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _warn_once_if_nonfinite(self, new_logs: dict[str, float], state: Any) -> None:
        """One warning, the first time a logged value is NaN / Inf or a group counts non-finite tensors."""
        if self._warned_nonfinite:
            return
        bad = sorted(key for key, value in new_logs.items()
                     if not math.isfinite(value) or (key.startswith(NONFINITE_PREFIX) and value > 0))
        if bad:
            self._warned_nonfinite = True
            if getattr(state, "is_world_process_zero", True):
                logger.warning("AlphaMonitorCallback: non-finite optimizer statistics at step %d (%s): the update "
                               "held NaN / Inf values, training has likely diverged", state.global_step,
                               ", ".join(f"{key}={new_logs[key]}" for key in bad[:8]))

    def _statistics_optimizer(self, optimizer: Any, state: Any) -> Any | None:
        source = find_statistics_optimizer(optimizer)
        if source is None and not self._warned_no_statistics:
            self._warned_no_statistics = True
            if getattr(state, "is_world_process_zero", True):
                logger.warning(
                    "AlphaMonitorCallback: the optimizer (%s) has no statistics() method; no alpha / mask-ratio "
                    "values will be logged. Use an optimizer of hf_alphaadam, e.g. optim='alphaadam'.",
                    _describe_chain(optimizer))
        return source

    def _move_ahead_of_reporting_callbacks(self, state: Any) -> None:
        handler = self._calling_handler()
        if handler is not None:
            _move_to_front(handler.callbacks, self)
        elif not self._installed and getattr(state, "is_world_process_zero", True):
            logger.warning(
                "AlphaMonitorCallback could not find the trainer's callback list to move itself ahead of the "
                "reporting callbacks: its values will reach state.log_history but maybe not TensorBoard / W&B. "
                "Call AlphaMonitorCallback().install(trainer) before trainer.train() instead.")

    def _calling_handler(self) -> CallbackHandler | None:
        """The CallbackHandler on the call stack whose list holds this callback (it is a few frames up)."""
        frame = inspect.currentframe()
        try:
            for _ in range(8):
                if frame is None:
                    return None
                candidate = frame.f_locals.get("self")
                if isinstance(candidate, CallbackHandler) and any(cb is self for cb in candidate.callbacks):
                    return candidate
                frame = frame.f_back
            return None
        finally:
            del frame  # frames reference their locals: do not keep a cycle alive


# ---- attaching the callback by itself ---------------------------------------------------------------------------

MONITOR_ENVIRONMENT_VARIABLE = "HF_ALPHAADAM_MONITOR"
# How many frames up from _calling_trainer the Trainer's create_optimizer may be (3 today: _calling_trainer <-
# attach_to_calling_trainer <- the optimizer constructor's __new__ <- Trainer.create_optimizer).
_MAX_TRAINER_FRAMES = 6


def attach_to_calling_trainer() -> AlphaMonitorCallback | None:
    """Attach an AlphaMonitorCallback to the Trainer that is creating an optimizer of this package right now.

    Called by the optimizer constructor that ``optim="alphaadam"`` etc. (and :func:`~.registry.
    optimizer_cls_and_kwargs`) give the Trainer, so that ``trl sft --optim alphaadam``, LLaMA-Factory and axolotl
    log ``alpha/...`` and ``mask_ratio/...`` without user code. The rules:

    - the Trainer is the ``self`` of a calling frame (``Trainer.create_optimizer`` calls the constructor); an
      optimizer built outside a Trainer gets nothing;
    - if the Trainer already has an AlphaMonitorCallback (passed by the user, by a plugin, or attached before),
      nothing is added: that one moves itself ahead of the reporting callbacks when training starts;
    - otherwise a new ``AlphaMonitorCallback()`` is installed first in the Trainer's callbacks, so that its keys
      reach TensorBoard, W&B and ``log_history`` (the optimizer is created before ``on_train_begin``);
    - ``HF_ALPHAADAM_MONITOR=0`` turns this off (``1``, the default, keeps it on; any other value is an error).

    Returns the attached callback, or None.
    """
    if not _monitor_switch_on():
        return None
    trainer = _calling_trainer()
    if trainer is None:
        return None
    if any(isinstance(callback, AlphaMonitorCallback) for callback in trainer.callback_handler.callbacks):
        return None
    callback = AlphaMonitorCallback().install(trainer)
    logger.info("AlphaMonitorCallback attached to %s (alpha/... and mask_ratio/... in the logs; %s=0 turns this "
                "off)", type(trainer).__name__, MONITOR_ENVIRONMENT_VARIABLE)
    return callback


def _monitor_switch_on() -> bool:
    value = os.environ.get(MONITOR_ENVIRONMENT_VARIABLE, "1")
    if value not in ("0", "1"):
        raise ValueError(f"{MONITOR_ENVIRONMENT_VARIABLE}={value!r} is not allowed: use 1 (attach "
                         "AlphaMonitorCallback to Trainers that use an optimizer of hf_alphaadam; the default) or 0 "
                         "(do not attach it)")
    return value == "1"


def _calling_trainer() -> Any | None:
    from transformers.trainer import Trainer  # imported already: the caller checks

    frame = inspect.currentframe()
    try:
        for _ in range(_MAX_TRAINER_FRAMES):
            frame = frame.f_back if frame is not None else None
            if frame is None:
                return None
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer) and getattr(candidate, "callback_handler", None) is not None:
                return candidate
        return None
    finally:
        del frame
