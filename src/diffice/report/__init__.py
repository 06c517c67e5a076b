"""diffice.report"""
