"""Every lab scenario, by name. Each module registers its own with
:func:`iscsi_ha_lab.scenario_kit.scenario`; importing this module imports them all, so
:func:`all_scenarios` and :func:`run_scenario` see every one (no module here is imported back by
a scenario module: the kit is where they get their helpers).
"""
import collections

from iscsi_ha_lab import (scenarios_core, scenarios_fencing, scenarios_manual,  # noqa: F401
                          scenarios_mediator, scenarios_resilience, scenarios_service,
                          scenarios_splitbrain)
from iscsi_ha_lab.scenario_kit import (  # noqa: F401  (the runner and helpers, re-exported)
    SCENARIOS, Result, ScenarioRun, alerts_of, pool_conf_changed_at, run_scenario, scenario,
    settled)


def all_scenarios(mediator=False):
    """{name: Scenario} of every scenario, in registration order. The ``mediator-*`` ones (a
    lab with a mediator) only with ``mediator=True``, and then only they."""
    return collections.OrderedDict((name, s) for name, s in SCENARIOS.items()
                                   if name.startswith("mediator-") == bool(mediator))
