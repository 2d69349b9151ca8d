"""monolake.uring"""
