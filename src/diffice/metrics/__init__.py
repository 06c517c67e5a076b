"""diffice.metrics"""
