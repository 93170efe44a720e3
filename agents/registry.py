"""The names the `arx` command offers as choices: the policies (name -> the Specialist class that runs
it) and the control arms. Free of imports, so that parsing a command line loads no agent code."""

# A new policy is a Specialist subclass plus one line here.
POLICIES = {
    "tpe": "agents.tpe:TPESpecialist",
    "llm": "agents.llm:LLMSpecialist",
    "catalog": "agents.catalog:CatalogSpecialist",
    "combiner": "agents.combiner:CombinerSpecialist",
    "repair": "agents.repair:RepairSpecialist",
}

# The control arms of a campaign (agents.arms says what each runs and shows).
ARMS = ("lineage", "no-lineage", "generalist", "generic")
