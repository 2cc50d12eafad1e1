// Python binding of the epoch DP (halo._core.PlanCost, plan_dp_search): a PlanCost is built from a
// Python CostTable by python/halo/plan/search/native.py and searched with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <utility>
#include <vector>

#include "epoch_dp.h"
#include "plan_cost.h"

namespace py = pybind11;

namespace halo {

void bind_plan(py::module_& m) {
  py::class_<PlanCost>(m, "PlanCost", "The plan problem's cost semantics over flat arrays (see CostTable), to search")
      .def(py::init([](std::vector<int> model_of, std::vector<int> parent, std::vector<double> base_s,
                       std::vector<double> penalty_s, std::vector<std::vector<int>> deps,
                       std::vector<std::vector<int>> tool_deps, std::vector<double> tool_s,
                       std::vector<std::vector<int>> tool_llm_deps, std::vector<std::vector<int>> tool_tool_deps,
                       std::vector<std::pair<bool, int>> node_order, std::vector<double> load_s,
                       std::vector<int> kind_of, std::vector<double> kind_speed, std::vector<int> initial_model,
                       double overhead_s, double w_makespan, double w_load,
                       std::vector<std::vector<int>> split_ways, std::vector<std::vector<double>> split_base_s,
                       std::vector<std::vector<double>> split_penalty_s, std::vector<double> span_lb_s,
                       std::vector<double> work_lb_s) {
             PlanCostArrays a{std::move(model_of),      std::move(parent),        std::move(base_s),
                              std::move(penalty_s),     std::move(deps),          std::move(tool_deps),
                              std::move(tool_s),        std::move(tool_llm_deps), std::move(tool_tool_deps),
                              std::move(node_order),    std::move(load_s),        std::move(kind_of),
                              std::move(kind_speed),    std::move(initial_model), overhead_s,
                              w_makespan,               w_load,
                              std::move(split_ways),    std::move(split_base_s),  std::move(split_penalty_s),
                              std::move(span_lb_s),     std::move(work_lb_s)};
             return PlanCost(std::move(a));
           }),
           py::arg("model_of"), py::arg("parent"), py::arg("base_s"), py::arg("penalty_s"), py::arg("deps"),
           py::arg("tool_deps"), py::arg("tool_s"), py::arg("tool_llm_deps"), py::arg("tool_tool_deps"),
           py::arg("node_order"), py::arg("load_s"), py::arg("kind_of"), py::arg("kind_speed"),
           py::arg("initial_model"), py::arg("overhead_s"), py::arg("w_makespan"), py::arg("w_load"),
           py::arg("split_ways") = std::vector<std::vector<int>>{},
           py::arg("split_base_s") = std::vector<std::vector<double>>{},
           py::arg("split_penalty_s") = std::vector<std::vector<double>>{},
           py::arg("span_lb_s") = std::vector<double>{}, py::arg("work_lb_s") = std::vector<double>{})
      .def_property_readonly("n", &PlanCost::n)
      .def_property_readonly("n_tools", &PlanCost::n_tools);

  m.def(
      "plan_dp_search",
      [](const PlanCost& cost, double incumbent_cost, int64_t state_budget, std::optional<double> time_limit_s,
         int64_t max_actions, int heuristic_width, int64_t heuristic_actions) {
        DpOptions options{state_budget, time_limit_s.value_or(-1.0), max_actions, heuristic_width, heuristic_actions};
        DpResult result;
        {
          py::gil_scoped_release release;  // the search touches no Python object
          result = search_epoch_dp(cost, incumbent_cost, options);
        }
        py::object schedule = result.schedule ? py::cast(*result.schedule) : py::none();
        return py::make_tuple(schedule, result.states, result.optimal, result.cost);
      },
      py::arg("cost"), py::arg("incumbent_cost"), py::arg("state_budget"), py::arg("time_limit_s"),
      py::arg("max_actions"), py::arg("heuristic_width"), py::arg("heuristic_actions"),
      "Two-phase epoch DP (python/halo/plan/search/dp.py): (schedule or None, states, optimal, cost)");
}

}  // namespace halo
