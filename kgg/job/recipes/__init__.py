"""The two recipes: `guide` (the 2018 guide's, all layers with SGD) and `fast` (a head on cached
features of the frozen base, then fine-tuning its last block). Each takes the run, the runtime,
the resolved base weights and the Inputs, and returns the trained image -> probabilities model."""
