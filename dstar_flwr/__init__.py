"""dstar-flwr: dSTAR, straggler-tolerant and Byzantine-resilient aggregation for Flower.

``DStar`` is the message-API strategy (``flwr.serverapp.strategy``); ``DStarLegacy``
and ``FirstKFitWorkflow`` serve the legacy API; ``dstar_aggregate`` is the rule
itself on flat arrays, usable without Flower. ``InterceptedStrategy`` and the
``ReplyTransform`` protocol put reply transforms (``DropMalformedReplies``) in
front of Flower's own strategies. ``save_checkpoint`` and
``load_checkpoint`` read and write the checkpoints ``DStar.start`` resumes from.
"""

from .aggregation import DStarAggregation, dstar_aggregate
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .first_k import CollectedRound, FirstKCollector, resolve_first_k
from .interception import (
    DropMalformedReplies,
    InterceptedStrategy,
    ReplyTransform,
    with_reply_transforms,
)
from .legacy import DStarLegacy, FirstKFitWorkflow
from .records import MalformedReply
from .replies import CheckedReply, ReplyStatus, check_train_reply
from .report import AggregatedRound, RoundReport
from .rule import DStarRule
from .strategy import DStar

__all__ = [
    "AggregatedRound",
    "CheckedReply",
    "Checkpoint",
    "CheckpointError",
    "CollectedRound",
    "DStar",
    "DStarAggregation",
    "DStarLegacy",
    "DStarRule",
    "DropMalformedReplies",
    "FirstKCollector",
    "FirstKFitWorkflow",
    "InterceptedStrategy",
    "MalformedReply",
    "ReplyStatus",
    "ReplyTransform",
    "RoundReport",
    "check_train_reply",
    "dstar_aggregate",
    "load_checkpoint",
    "resolve_first_k",
    "save_checkpoint",
    "with_reply_transforms",
]

__version__ = "0.1.0"
