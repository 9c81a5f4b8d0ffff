"""simkv: a discrete-event simulator of how LLM serving engines spend KV-cache memory and time.

    import simkv
    scenario = simkv.load_scenario("scenarios/quickstart.yaml", ["engine.block_size=32"])
    result = simkv.simulate(scenario)
    print(result.summary["kv_cache"]["utilization_mean"])
"""

from simkv.errors import SimkvError
from simkv.files.scenario_file import load_scenario
from simkv.result import Result
from simkv.scenario import Scenario
from simkv.simulate import simulate, simulate_all, simulate_sweep

__version__ = "0.1.0"
__all__ = ["load_scenario", "simulate", "simulate_all", "simulate_sweep", "Result", "Scenario", "SimkvError", "__version__"]
