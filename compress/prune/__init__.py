"""Pruning: unstructured magnitude, structured (dependency-aware, torch-pruning), lottery ticket, SNIP.

Each technique is a config plus a technique class, registered in `compress.registry`:

- `unstructured.UnstructuredPruneConfig` (`unstructured_prune`) — magnitude, global or per layer,
  one-shot or gradual (cubic AGP);
- `structured.StructuredPruneConfig` (`structured_prune`) — channels, by ratio or MACs budget;
- `lottery.LotteryTicketConfig` (`lottery_ticket`) — iterative magnitude pruning with rewinding;
- `snip.SnipConfig` (`snip`) — connection sensitivity at initialization.

`masks` holds what the three weight-level techniques share; `graph` the torch-pruning wiring;
`reconstruct` the label-free least-squares repair (`refit_linears`, and `prune_and_refit`, which
also chooses the channels a pointwise layer reads by their least-squares cost); `refit_layers`
which layers that cut applies to in a model, and redoing a recorded cut.
"""
