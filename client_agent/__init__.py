"""The client agent installed at a site: DP reward-model training, the site privacy policy,
and the agent that dials the coordinator and answers scoring requests."""
