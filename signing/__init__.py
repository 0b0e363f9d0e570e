"""Signature crypto and canonical strings of the go-infer envelope, shared by `registry` and `portal`.

No Django here: the standalone client (`portal.signed.client`) imports it too.
"""
