"""monolake.supervisor"""
