"""healthchecks: async health probes, independent of anycastd."""
