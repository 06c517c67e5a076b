"""diffice.diffusion"""
