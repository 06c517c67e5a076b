"""diffice.counterfactual"""
