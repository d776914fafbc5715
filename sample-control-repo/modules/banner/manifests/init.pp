# Show the login banner.
class banner (
  String $text = 'Authorised use only.',
) {
  notify { 'banner':
    message => "banner: ${text}",
  }
}
