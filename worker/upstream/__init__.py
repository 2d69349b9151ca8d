"""The upstream kit shared by the HTTP and Thrift proxies: endpoint health and eligibility
(endpoint.py), passive ejection (ejection.py), balancers (balance.py) and idle-connection
fd hand-over for reloads (idle.py). See docs/contracts.md, "Upstream kit"."""
