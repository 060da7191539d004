# Embeds gateway/web/console.html into a C++ source file as a raw string literal.
file(READ "${INPUT}" CONTENT)
file(WRITE "${OUTPUT}" "// Generated from gateway/web/console.html. Do not edit.\n#include \"console_page.hpp\"\nnamespace busgate::gw {\nstd::string_view console_page() {\n  static constexpr std::string_view kPage = R\"BUSGATE_PAGE(${CONTENT})BUSGATE_PAGE\";\n  return kPage;\n}\n}  // namespace busgate::gw\n")
