"""Every lab scenario, by name. Each module registers its own with
:func:`iscsi_ha_lab.scenario_kit.scenario`; importing this module imports them all, so
:func:`all_scenarios` and :func:`run_scenario` see every one (no module here is imported back by
a scenario module: the kit is where they get their helpers).
"""
from iscsi_ha_lab import (scenarios_core, scenarios_fencing, scenarios_manual,  # noqa: F401
                          scenarios_resilience, scenarios_service, scenarios_splitbrain)
from iscsi_ha_lab.scenario_kit import (  # noqa: F401  (the runner and helpers, re-exported)
    SCENARIOS, Result, ScenarioRun, alerts_of, pool_conf_changed_at, run_scenario, scenario,
    settled)


def all_scenarios():
    """{name: Scenario} of every scenario, in registration order."""
    return SCENARIOS
