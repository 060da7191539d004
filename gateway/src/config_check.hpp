#pragma once
// Configuration rules that span several keys: tenant isolation on the bus (docs/protocol.md
// section 9) and the node id's grammar. Both throw ConfigError naming the key, like the rest of the
// validation (docs/configuration.md, "Rules that keep tenants apart").

#include <string>
#include <string_view>
#include <vector>

#include "config.hpp"

namespace busgate::gw {

// node_id grammar, [A-Za-z0-9_-]{1,64}: the id is a token of bus subjects (`_INBOX.<node_id>.…`),
// and reply aliases rely on `~` never appearing in it.
bool valid_node_id(std::string_view id);
// `text` with every character outside that grammar replaced by '-', cut to 64 characters.
std::string node_id_from(std::string_view text);

// Tenant namespaces never overlap one another nor the reserved bus subjects, and imports reach only
// subjects outside every namespace. `tenants` is the parsed list; errors name tenants[i].….
void check_isolation(const std::vector<TenantConfig>& tenants);

}  // namespace busgate::gw
