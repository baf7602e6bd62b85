"""HOW anything is trained: the train state, the step with its recipe hooks, and the one driver loop."""
