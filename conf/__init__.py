"""monolake.conf"""
