"""Routing rules: which arriving series become which AI jobs (``routing-rules.yaml``).

Load once with :func:`load_rules` (or keep current with :class:`RulesWatcher`), then ask
:meth:`RuleSet.evaluate` for the :class:`Decision` list of each series' facts. Nothing here
talks to Orthanc or Celery, so the plugin, the CLI and tests use the same code.
"""

from ainode.queues import Pool, Priority, all_queue_names, queue_name

from .attributes import (
    SYNTHETIC_ATTRIBUTES,
    AttributeValues,
    cap_values,
    is_identifying,
    normalize_attributes,
    normalize_value,
)
from .conditions import Condition
from .destinations import KnownDestinations, destination_label, parse_destination
from .errors import Problem, RulesError
from .loader import load_rules, parse_rules
from .rules import (
    GUARD_INPUT,
    GUARD_NODE_OUTPUT,
    GUARD_NON_IMAGE_CLASS,
    GUARD_RESULT_MODALITY,
    NO_RULE_MATCHED,
    NODE_MANUFACTURER,
    NON_IMAGE_MODALITIES,
    RULES_OVER_BUDGET,
    RULES_UNAVAILABLE,
    Decision,
    FactsLike,
    HasAttributes,
    Notify,
    Rule,
    RuleCheck,
    RuleSet,
    input_problem,
    loop_guard,
)
from .schema import Action, MatchMode, NotifyEvent, Trigger
from .watcher import RulesStatus, RulesWatcher

__all__ = [
    "GUARD_INPUT",
    "GUARD_NODE_OUTPUT",
    "GUARD_NON_IMAGE_CLASS",
    "GUARD_RESULT_MODALITY",
    "NODE_MANUFACTURER",
    "NON_IMAGE_MODALITIES",
    "NO_RULE_MATCHED",
    "RULES_OVER_BUDGET",
    "RULES_UNAVAILABLE",
    "SYNTHETIC_ATTRIBUTES",
    "Action",
    "AttributeValues",
    "Condition",
    "Decision",
    "FactsLike",
    "HasAttributes",
    "KnownDestinations",
    "MatchMode",
    "Notify",
    "NotifyEvent",
    "Pool",
    "Priority",
    "Problem",
    "Rule",
    "RuleCheck",
    "RuleSet",
    "RulesError",
    "RulesStatus",
    "RulesWatcher",
    "Trigger",
    "all_queue_names",
    "cap_values",
    "destination_label",
    "input_problem",
    "is_identifying",
    "load_rules",
    "loop_guard",
    "normalize_attributes",
    "normalize_value",
    "parse_destination",
    "parse_rules",
    "queue_name",
]
