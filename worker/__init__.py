"""monolake.worker"""
