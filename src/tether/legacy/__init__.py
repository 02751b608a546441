"""Legacy shared secrets: find them (scan), broker them (import), retire them (rotate).

``scan``       walks working trees and whole git histories with detect-secrets plus the
               Tether plugins in ``plugins``; findings carry fingerprints, never values
``findings``   the finding record, service attribution, baselines, JSON and SARIF output
See ``docs/secrets.md`` for the migration runbook.
"""
