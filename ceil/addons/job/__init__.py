"""The post-join job: applies a rendered add-on plan with the `kubernetes` client.

Standard library + `kubernetes` only, relative imports only: the same files run on the
workstation (`python bake.py addons apply`) and, copied as the package `addons_job`, on the
k3s server (ceil-addons.service).
"""
