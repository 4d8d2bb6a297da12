"""The operations the faces call, each taking a core.runtime.Runtime: generate (generation), validate (validation),
dry_run, the sending and give-back of deliveries (sending), failover, refusal records (refusals), provider
receipts (receipts), the console's test sends (trials), configuration and API-client changes (admin_actions) and
the home page's status (status). May import every layer of core below it; never a face.
"""
