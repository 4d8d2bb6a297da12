"""The console's shared parts, used by console.py and the pages/ scripts: the signed-in session and the runtime
(state) and the dashboards' filters, charts and CSV buttons (widgets). Imports core; never a face.
"""
